//! Parses webhook bodies into a `Lead`: our native `lead.v1` document and the flat shorthand
//! `{"email", "name", "company", "job_title", "phone", "source", "answers", …}`. Every
//! refusal names the field (as a JSON path) and the problem.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::lead::{Consent, Email, Lead, Phone, reject_header_breakers};

/// Longest name, company or job title accepted, in characters.
const MAX_SHORT_TEXT: usize = 200;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON at all (400).
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    /// A required field is absent (422).
    #[error("{field} is required")]
    Missing { field: String },
    /// A field is present but unusable (422).
    #[error("{field} {problem}")]
    Invalid { field: String, problem: String },
}

impl PayloadError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        PayloadError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The JSON path of the field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            PayloadError::Malformed(_) => None,
            PayloadError::Missing { field } | PayloadError::Invalid { field, .. } => Some(field),
        }
    }
}

/// A parsed body: the lead and the sender's own idempotency key, if it gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The lead.
    pub lead: Lead,
    /// `idempotency_key` of the body.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct V1 {
    idempotency_key: Option<String>,
    source: Option<V1Source>,
    utm: Option<BTreeMap<String, Option<String>>>,
    contact: Option<V1Contact>,
    answers: Option<Map<String, Value>>,
    consent: Option<V1Consent>,
    behaviour: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct V1Source {
    kind: Option<String>,
    form_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct V1Contact {
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    company: Option<String>,
    job_title: Option<String>,
    country: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct V1Consent {
    email_marketing: Option<bool>,
    sms_marketing: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct Flat {
    idempotency_key: Option<String>,
    email: Option<String>,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    job_title: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    source: Option<String>,
    answers: Option<Map<String, Value>>,
    behaviour: Option<Map<String, Value>>,
    utm: Option<BTreeMap<String, Option<String>>>,
    consent: Option<FlatConsent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FlatConsent {
    Both(bool),
    Each(V1Consent),
}

/// Parses a webhook body. `max_answer_chars` caps every string inside `answers`.
pub fn parse_body(body: &[u8], max_answer_chars: usize) -> Result<Parsed, PayloadError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let Value::Object(object) = &value else {
        return Err(PayloadError::invalid("$", "must be a JSON object"));
    };
    let is_v1 = object.get("schema").and_then(Value::as_str) == Some("lead.v1")
        || object.contains_key("contact");
    if let Some(Value::String(name)) = object.get("name") {
        reject_header_breakers(name).map_err(|e| PayloadError::invalid("name", e.0))?;
    }
    let (raw, key, prefix) = if is_v1 {
        from_v1(typed(value, "")?)
    } else {
        from_flat(typed(value, "")?)
    };
    let lead = build(raw, prefix, max_answer_chars)?;
    let idempotency_key = key.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
    if idempotency_key.as_ref().is_some_and(|k| k.len() > 200) {
        return Err(PayloadError::invalid(
            "idempotency_key",
            "is longer than 200 bytes",
        ));
    }
    Ok(Parsed {
        lead,
        idempotency_key,
    })
}

/// Deserialises with the path of the first type error, e.g. `contact.email: invalid type`.
fn typed<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, PayloadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}{path}")
        };
        PayloadError::invalid(field, plain_serde_message(&e.into_inner().to_string()))
    })
}

/// Fields common to both shapes, before checking.
#[derive(Debug, Default)]
struct Raw {
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    job_title: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    source: Option<String>,
    consent: Consent,
    answers: Map<String, Value>,
    behaviour: Map<String, Value>,
    utm: BTreeMap<String, Option<String>>,
}

fn from_v1(v1: V1) -> (Raw, Option<String>, &'static str) {
    let contact = v1.contact.unwrap_or_default();
    let source = v1.source.unwrap_or_default();
    let consent = v1.consent.unwrap_or_default();
    let raw = Raw {
        email: contact.email,
        first_name: contact.first_name,
        last_name: contact.last_name,
        company: contact.company,
        job_title: contact.job_title,
        phone: contact.phone,
        country: contact.country,
        source: source.kind.or(source.form_id),
        consent: Consent {
            email_marketing: consent.email_marketing.unwrap_or(false),
            sms_marketing: consent.sms_marketing.unwrap_or(false),
        },
        answers: v1.answers.unwrap_or_default(),
        behaviour: v1.behaviour.unwrap_or_default(),
        utm: v1.utm.unwrap_or_default(),
    };
    (raw, v1.idempotency_key, "contact.")
}

fn from_flat(flat: Flat) -> (Raw, Option<String>, &'static str) {
    let (first_name, last_name) = match (flat.first_name, flat.last_name, flat.name) {
        (None, None, Some(name)) => match name.trim().split_once(char::is_whitespace) {
            Some((first, rest)) => (Some(first.to_owned()), Some(rest.trim().to_owned())),
            None => (Some(name), None),
        },
        (first, last, _) => (first, last),
    };
    let consent = match flat.consent {
        Some(FlatConsent::Both(all)) => Consent {
            email_marketing: all,
            sms_marketing: all,
        },
        Some(FlatConsent::Each(each)) => Consent {
            email_marketing: each.email_marketing.unwrap_or(false),
            sms_marketing: each.sms_marketing.unwrap_or(false),
        },
        None => Consent::default(),
    };
    let raw = Raw {
        email: flat.email,
        first_name,
        last_name,
        company: flat.company,
        job_title: flat.job_title,
        phone: flat.phone,
        country: flat.country,
        source: flat.source,
        consent,
        answers: flat.answers.unwrap_or_default(),
        behaviour: flat.behaviour.unwrap_or_default(),
        utm: flat.utm.unwrap_or_default(),
    };
    (raw, flat.idempotency_key, "")
}

fn build(raw: Raw, prefix: &str, max_answer_chars: usize) -> Result<Lead, PayloadError> {
    let field = |name: &str| format!("{prefix}{name}");
    let email_raw =
        raw.email
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| PayloadError::Missing {
                field: field("email"),
            })?;
    let email = Email::parse(&email_raw).map_err(|e| PayloadError::invalid(field("email"), e.0))?;
    let short = |name: &str, value: Option<String>| short_text(&field(name), value);
    let first_name = short("first_name", raw.first_name)?;
    let last_name = short("last_name", raw.last_name)?;
    let company = short("company", raw.company)?;
    let job_title = short("job_title", raw.job_title)?;
    let phone_raw = short("phone", raw.phone)?;
    let country = match short("country", raw.country)? {
        Some(c) if is_iso_country(&c) => Some(c.to_ascii_uppercase()),
        Some(_) => {
            return Err(PayloadError::invalid(
                field("country"),
                "must be an ISO 3166 alpha-2 code such as 'GB'",
            ));
        }
        None => None,
    };
    let source = short_text("source", raw.source)?.unwrap_or_else(|| "webhook".into());
    check_strings(
        "answers",
        &Value::Object(raw.answers.clone()),
        max_answer_chars,
    )?;
    check_strings(
        "behaviour",
        &Value::Object(raw.behaviour.clone()),
        max_answer_chars,
    )?;
    let phone = phone_raw
        .as_deref()
        .and_then(|p| Phone::parse(p, country.as_deref()));
    let mut utm = BTreeMap::new();
    for (key, value) in raw.utm {
        if let Some(v) = short_text(&format!("utm.{key}"), value)? {
            utm.insert(key, v);
        }
    }
    Ok(Lead {
        email,
        first_name,
        last_name,
        company,
        job_title,
        phone_raw,
        phone,
        country,
        source,
        consent: raw.consent,
        answers: raw.answers.into_iter().collect(),
        behaviour: raw.behaviour.into_iter().collect(),
        utm,
    })
}

/// An ISO 3166 alpha-2 code that numbering plans know (`GB`, not `UK` or `ZZ`).
fn is_iso_country(code: &str) -> bool {
    code.len() == 2
        && code
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .is_ok()
}

/// serde's messages name our Rust types; the sender should read JSON words instead.
fn plain_serde_message(message: &str) -> String {
    if message.contains("untagged enum FlatConsent") {
        return "must be true, false or {\"email_marketing\": bool, \"sms_marketing\": bool}"
            .into();
    }
    let words = [("struct ", "an object"), ("a map", "an object")];
    let mut out = message.to_owned();
    for (rust, json) in words {
        if let Some(start) = out.find(&format!("expected {rust}")) {
            out = format!("{}expected {json}", &out[..start]);
        }
    }
    out
}

/// Trims a short header-bound text; blank becomes `None`; CR/LF/NUL and overlong are refused.
fn short_text(field: &str, value: Option<String>) -> Result<Option<String>, PayloadError> {
    let Some(value) = value else { return Ok(None) };
    reject_header_breakers(&value).map_err(|e| PayloadError::invalid(field, e.0))?;
    let trimmed = value.trim();
    if trimmed.chars().count() > MAX_SHORT_TEXT {
        return Err(PayloadError::invalid(
            field,
            format!("is longer than {MAX_SHORT_TEXT} characters"),
        ));
    }
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

/// Refuses any string longer than `max` characters anywhere inside `value`.
/// Also refuses nesting deeper than `MAX_DEPTH`: the queued event wraps these values in more
/// levels, and must stay parseable by the worker (serde_json stops at 128).
fn check_strings(path: &str, value: &Value, max: usize) -> Result<(), PayloadError> {
    check_value(path, value, max, 0)
}

/// Deepest nesting accepted inside `answers` or `behaviour`.
const MAX_DEPTH: usize = 16;

fn check_value(path: &str, value: &Value, max: usize, depth: usize) -> Result<(), PayloadError> {
    if depth > MAX_DEPTH {
        return Err(PayloadError::invalid(
            path,
            format!("is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    match value {
        Value::String(s) if s.chars().count() > max => Err(PayloadError::invalid(
            path,
            format!("is longer than {max} characters"),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_value(&format!("{path}[{i}]"), v, max, depth + 1)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_value(&format!("{path}.{k}"), v, max, depth + 1)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LANDING: &[u8] = include_bytes!("../../tests/fixtures/landing-lead.json");

    #[test]
    fn the_landing_page_sample_parses_with_consent_and_phone() {
        let parsed = parse_body(LANDING, 4000).unwrap();

        assert_eq!(
            parsed.idempotency_key.as_deref(),
            Some("lp-2f9c1a7e-6b0d-4c3e-9a51-0d2b7e4f8a10")
        );
        assert_eq!(parsed.lead.email.normalized(), "ada.example@example.com");
        assert_eq!(
            parsed.lead.phone.as_ref().map(|p| p.as_str()),
            Some("+12025550143")
        );
        assert_eq!(parsed.lead.source, "landing_page");
        assert!(parsed.lead.consent.email_marketing && !parsed.lead.consent.sms_marketing);
        assert_eq!(parsed.lead.behaviour["total_visits"], 5);
    }

    #[test]
    fn the_flat_shorthand_splits_the_name() {
        let body = br#"{"email":"a@example.com","name":"Ada Lovelace King","consent":true}"#;

        let lead = parse_body(body, 4000).unwrap().lead;

        assert_eq!(lead.first_name.as_deref(), Some("Ada"));
        assert_eq!(lead.last_name.as_deref(), Some("Lovelace King"));
        assert!(lead.consent.sms_marketing);
    }

    #[test]
    fn each_refusal_names_its_field() {
        let field = |body: &[u8]| parse_body(body, 10).unwrap_err().field().map(String::from);

        assert_eq!(field(br#"{"name":"x"}"#).as_deref(), Some("email"));
        assert_eq!(
            field(br#"{"contact":{}}"#).as_deref(),
            Some("contact.email")
        );
        assert_eq!(field(br#"{"email":"nope"}"#).as_deref(), Some("email"));
        assert_eq!(
            field(br#"{"email":"a@example.com","name":"E\r\nBcc: x"}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            field(br#"{"email":"a@example.com","answers":{"m":"01234567890"}}"#).as_deref(),
            Some("answers.m")
        );
        assert_eq!(
            field(br#"{"contact":{"email":5}}"#).as_deref(),
            Some("contact.email")
        );
        assert_eq!(field(br#"[1]"#).as_deref(), Some("$"));
        assert_eq!(parse_body(b"{", 10).unwrap_err().field(), None);
    }
}
