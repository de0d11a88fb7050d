//! Turns CSV rows into `lead.v1` webhook bodies with a column mapping file (TOML).
//! See `mappings/` for the two shipped data sets.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// A column mapping, as written in a `mappings/*.toml` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Names the data set; prefixes idempotency keys so a re-import is recognised.
    pub dataset: String,
    /// Field separator, one character.
    #[serde(default = "comma")]
    pub delimiter: String,
    /// Column holding a unique row id; without it the 1-based row number is the id.
    pub id_column: Option<String>,
    /// Put before the id in generated addresses (`lead-<prefix><id>@example.com`).
    #[serde(default)]
    pub id_prefix: String,
    /// Cell values that mean "no value".
    #[serde(default)]
    pub missing: Vec<String>,
    /// Fixed source for every row.
    pub source: Option<String>,
    /// Column holding the source; wins over `source` when the cell has a value.
    pub source_column: Option<String>,
    /// `lead.v1` contact field (`email`, `first_name`, `job_title` …) to column.
    #[serde(default)]
    pub contact: BTreeMap<String, String>,
    /// Answer key to column.
    #[serde(default)]
    pub answers: BTreeMap<String, String>,
    /// Behaviour key to column.
    #[serde(default)]
    pub behaviour: BTreeMap<String, String>,
    /// How consent is known.
    #[serde(default)]
    pub consent: ConsentMapping,
}

/// Consent as a constant, or from opt-out columns (`Yes` = opted out).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentMapping {
    /// Constant email consent.
    pub email_marketing: Option<bool>,
    /// Constant SMS consent.
    pub sms_marketing: Option<bool>,
    /// Column whose `Yes` means no email.
    pub email_opt_out_column: Option<String>,
    /// Column whose `Yes` means no SMS.
    pub sms_opt_out_column: Option<String>,
}

fn comma() -> String {
    ",".into()
}

const CONTACT_FIELDS: &[&str] = &[
    "email",
    "first_name",
    "last_name",
    "company",
    "job_title",
    "phone",
    "country",
];

impl Mapping {
    /// Reads a mapping file; unknown keys are errors.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read mapping '{}': {e}", path.display()))?;
        let mapping: Mapping = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("mapping '{}': {e}", path.display()))?;
        if mapping.delimiter.len() != 1 {
            anyhow::bail!(
                "mapping '{}': delimiter must be one ASCII character",
                path.display()
            );
        }
        if let Some(bad) = mapping
            .contact
            .keys()
            .find(|k| !CONTACT_FIELDS.contains(&k.as_str()))
        {
            anyhow::bail!(
                "mapping '{}': unknown contact field '{bad}'",
                path.display()
            );
        }
        Ok(mapping)
    }

    fn columns(&self) -> impl Iterator<Item = &String> {
        self.contact
            .values()
            .chain(self.answers.values())
            .chain(self.behaviour.values())
            .chain(self.id_column.iter())
            .chain(self.source_column.iter())
            .chain(self.consent.email_opt_out_column.iter())
            .chain(self.consent.sms_opt_out_column.iter())
    }
}

/// Reads every row of `csv_path` into a webhook body. A column named in the mapping but
/// absent from the header is an error naming it.
pub fn bodies_from_csv(csv_path: &Path, mapping: &Mapping) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(csv_path)
        .map_err(|e| anyhow::anyhow!("cannot read '{}': {e}", csv_path.display()))?;
    bodies_from_csv_bytes(&csv_path.display().to_string(), &bytes, mapping)
}

/// Like `bodies_from_csv`, over CSV already in memory; `name` is used in errors.
pub fn bodies_from_csv_bytes(
    name: &str,
    bytes: &[u8],
    mapping: &Mapping,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(mapping.delimiter.as_bytes()[0])
        .flexible(true)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if let Some(missing) = mapping.columns().find(|c| !header.contains(c)) {
        anyhow::bail!("column '{missing}' of the mapping is not in the header of '{name}'");
    }
    let mut bodies = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| anyhow::anyhow!("row {}: {e}", index + 2))?;
        let row: BTreeMap<&str, &str> = header
            .iter()
            .zip(record.iter())
            .filter(|(h, _)| !h.is_empty())
            .map(|(h, v)| (h.as_str(), v.trim()))
            .filter(|(_, v)| !mapping.missing.iter().any(|m| m == v))
            .collect();
        bodies.push(serde_json::to_vec(&row_to_body(&row, mapping))?);
    }
    Ok(bodies)
}

/// An id for a row without an id column: a hash of its cells, so the same row in two files
/// (a sample and its full data set) is one lead, and different rows never collide by their
/// position.
fn content_id(row: &BTreeMap<&str, &str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (column, value) in row {
        hasher.update(column.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn row_to_body(row: &BTreeMap<&str, &str>, mapping: &Mapping) -> Value {
    let cell = |column: &String| row.get(column.as_str()).copied();
    let id = mapping
        .id_column
        .as_ref()
        .and_then(cell)
        .map(String::from)
        .unwrap_or_else(|| content_id(row));
    let id = format!("{}{id}", mapping.id_prefix);

    let mut contact: Map<String, Value> = mapping
        .contact
        .iter()
        .filter_map(|(field, column)| Some((field.clone(), Value::from(cell(column)?))))
        .collect();
    contact
        .entry("email")
        .or_insert_with(|| Value::from(format!("lead-{id}@example.com")));
    let typed = |fields: &BTreeMap<String, String>| -> Map<String, Value> {
        fields
            .iter()
            .filter_map(|(key, column)| Some((key.clone(), typed_cell(cell(column)?))))
            .collect()
    };
    let opted_out = |column: &Option<String>| {
        column
            .as_ref()
            .and_then(cell)
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
    };
    let c = &mapping.consent;
    let email_consent = c
        .email_marketing
        .unwrap_or(c.email_opt_out_column.is_some())
        && !opted_out(&c.email_opt_out_column);
    let sms_consent = c.sms_marketing.unwrap_or(c.sms_opt_out_column.is_some())
        && !opted_out(&c.sms_opt_out_column);
    let source = mapping
        .source_column
        .as_ref()
        .and_then(cell)
        .map(String::from)
        .or(mapping.source.clone());

    json!({
        "schema": "lead.v1",
        "idempotency_key": format!("{}-{id}", mapping.dataset),
        "source": { "kind": source },
        "contact": contact,
        "answers": typed(&mapping.answers),
        "behaviour": typed(&mapping.behaviour),
        "consent": { "email_marketing": email_consent, "sms_marketing": sms_consent },
    })
}

/// Numbers become JSON numbers (so rules can compare them); everything else stays text.
fn typed_cell(value: &str) -> Value {
    if let Ok(int) = value.parse::<i64>() {
        return Value::from(int);
    }
    match value.parse::<f64>() {
        Ok(float) if float.is_finite() => Value::from(float),
        _ => Value::from(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_empty_column_and_select_placeholder_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("l.csv");
        std::fs::write(
            &csv,
            "Lead Number,Job,Do Not Email,Visits,\r\n7,Select,No,2.5,\r\n8,CEO,Yes,,\r\n",
        )
        .unwrap();
        let mapping: Mapping = toml::from_str(
            r#"dataset = "t"
               id_column = "Lead Number"
               missing = ["", "Select"]
               [contact]
               job_title = "Job"
               [behaviour]
               visits = "Visits"
               [consent]
               email_opt_out_column = "Do Not Email""#,
        )
        .unwrap();

        let bodies = bodies_from_csv(&csv, &mapping).unwrap();
        let first: Value = serde_json::from_slice(&bodies[0]).unwrap();
        let second: Value = serde_json::from_slice(&bodies[1]).unwrap();

        assert_eq!(first["contact"], json!({ "email": "lead-7@example.com" }));
        assert_eq!(first["behaviour"]["visits"], json!(2.5));
        assert_eq!(first["consent"]["email_marketing"], json!(true));
        assert_eq!(first["idempotency_key"], json!("t-7"));
        assert_eq!(second["contact"]["job_title"], json!("CEO"));
        assert_eq!(second["consent"]["email_marketing"], json!(false));
    }

    #[test]
    fn rows_without_an_id_are_known_by_their_content_not_their_position() {
        let mapping: Mapping =
            toml::from_str("dataset = \"t\"\n[answers]\nage = \"age\"\n").unwrap();
        let ids = |csv: &str| -> Vec<String> {
            bodies_from_csv_bytes("t.csv", csv.as_bytes(), &mapping)
                .unwrap()
                .iter()
                .map(|b| {
                    serde_json::from_slice::<Value>(b).unwrap()["idempotency_key"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };

        let sample = ids("age,job\n56,housemaid\n");
        let full = ids("age,job\n30,blue-collar\n56,housemaid\n");

        assert_ne!(
            full[0], sample[0],
            "row 1 of each file is a different person"
        );
        assert_eq!(full[1], sample[0], "the same row in both files is one lead");
    }

    #[test]
    fn a_mapped_column_missing_from_the_header_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("l.csv");
        std::fs::write(&csv, "a,b\n1,2\n").unwrap();
        let mapping: Mapping =
            toml::from_str("dataset = \"t\"\n[answers]\nx = \"nope\"\n").unwrap();

        let err = bodies_from_csv(&csv, &mapping).unwrap_err();

        assert!(err.to_string().contains("'nope'"), "{err}");
    }
}
