//! Domain types that are valid by construction: an email address, a phone number, a score,
//! and the canonical lead every source is parsed into before it reaches the queue.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a piece of contact data was refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidField(pub String);

fn invalid(message: impl Into<String>) -> InvalidField {
    InvalidField(message.into())
}

/// Longest address SMTP can carry (RFC 5321 path limit less the brackets).
const MAX_EMAIL_LEN: usize = 254;

/// An email address as the person typed it, with a normalised form used for identity.
///
/// The normalised form lowercases the local part and the domain, and IDNA-encodes the domain,
/// so `Ada@Example.COM` and `ada@example.com` are one person, while `ada+promo@example.com`
/// stays a different address. Local parts outside ASCII are refused: sending to them needs
/// SMTPUTF8, which nurture does not speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    display: String,
    local: String,
    ascii_domain: String,
}

impl Email {
    /// Parses and checks an address; the error says what is wrong without echoing the address.
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        reject_header_breakers(raw)?;
        let display = raw.trim();
        if display.is_empty() {
            return Err(invalid("is empty"));
        }
        if display.len() > MAX_EMAIL_LEN {
            return Err(invalid(format!("is longer than {MAX_EMAIL_LEN} bytes")));
        }
        let (local, domain) = display
            .rsplit_once('@')
            .ok_or_else(|| invalid("has no '@'"))?;
        check_local_part(local)?;
        let ascii_domain = check_domain(domain)?;
        Ok(Self {
            display: display.to_owned(),
            local: local.to_owned(),
            ascii_domain,
        })
    }

    /// The address as typed (trimmed), for display.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The identity key: lowercase local part, lowercase IDNA (punycode) domain.
    pub fn normalized(&self) -> String {
        format!("{}@{}", self.local.to_ascii_lowercase(), self.ascii_domain)
    }

    /// The address as SMTP transports it: local part as typed, punycode domain.
    pub fn transport(&self) -> String {
        format!("{}@{}", self.local, self.ascii_domain)
    }
}

fn check_local_part(local: &str) -> Result<(), InvalidField> {
    if local.is_empty() || local.len() > 64 {
        return Err(invalid(
            "has a local part that is empty or longer than 64 bytes",
        ));
    }
    if !local.is_ascii() {
        return Err(invalid(
            "has a non-ASCII local part, which needs SMTPUTF8 (not supported)",
        ));
    }
    let is_atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if !local.chars().all(is_atext) {
        return Err(invalid("has a character not allowed in the local part"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(invalid("has a misplaced '.' in the local part"));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<String, InvalidField> {
    let ascii = idna::domain_to_ascii(domain)
        .map_err(|_| invalid("has a domain that is not a valid (IDNA) host name"))?;
    let labels_ok = ascii.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    // A top-level domain has a letter: `a@1.2` and `a@127.0.0.1` are not mail domains.
    let has_tld = ascii
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().any(|c| c.is_ascii_alphabetic()));
    if !labels_ok || !ascii.contains('.') || !has_tld {
        return Err(invalid("has a domain that is not a valid host name"));
    }
    Ok(ascii)
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.display)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Email::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Refuses the characters that could end a mail header early (CR, LF) or truncate a C string.
pub fn reject_header_breakers(value: &str) -> Result<(), InvalidField> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(invalid("contains CR, LF or NUL"));
    }
    Ok(())
}

/// A phone number in E.164 form (`+447700900123`), the only form an SMS gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    /// Parses a number as typed. Without a leading `+`, a two-letter country hint is needed:
    /// nurture never guesses a country, so `4512345678` alone is `None`.
    pub fn parse(raw: &str, country_hint: Option<&str>) -> Option<Self> {
        let trimmed = raw.trim();
        let country = if trimmed.starts_with('+') {
            None
        } else {
            Some(country_hint?.trim().to_ascii_uppercase().parse().ok()?)
        };
        let number = phonenumber::parse(country, trimmed).ok()?;
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        // Plausible length rather than `phonenumber::is_valid`: the metadata marks reserved
        // fiction ranges (UK 07700 900xxx, US 555-01xx) invalid, and tests and demos use them.
        let digits = e164.chars().filter(char::is_ascii_digit).count();
        (8..=15).contains(&digits).then_some(Self(e164))
    }

    /// The E.164 text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Phone {
    type Error = InvalidField;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Phone::parse(&value, None).ok_or_else(|| invalid("is not an E.164 phone number"))
    }
}

impl From<Phone> for String {
    fn from(phone: Phone) -> Self {
        phone.0
    }
}

/// A propensity score, 1 to 100 inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Score(u8);

impl Score {
    /// Builds a score; anything outside 1..=100 is an error quoting the value.
    pub fn new(value: i64) -> Result<Self, InvalidField> {
        if (1..=100).contains(&value) {
            Ok(Self(value as u8))
        } else {
            Err(invalid(format!(
                "invalid score '{value}', expected 1..=100"
            )))
        }
    }

    /// Clamps any integer into 1..=100 (for additive models whose sum can overshoot).
    pub fn clamped(value: i64) -> Self {
        Self(value.clamp(1, 100) as u8)
    }

    /// The score as a number.
    pub fn value(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Score {
    type Error = InvalidField;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Score::new(value)
    }
}

impl From<Score> for i64 {
    fn from(score: Score) -> Self {
        i64::from(score.0)
    }
}

/// What the person agreed to receive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Marketing email is allowed.
    pub email_marketing: bool,
    /// Marketing SMS is allowed.
    pub sms_marketing: bool,
}

/// A lead as every source is parsed into: checked contact data plus free-form answers.
///
/// This is the payload that waits in the queue; it is built once at ingest and trusted after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// The person's address; identity is its normalised form.
    pub email: Email,
    /// Given name, free of CR/LF/NUL.
    pub first_name: Option<String>,
    /// Family name, free of CR/LF/NUL.
    pub last_name: Option<String>,
    /// Company name, free of CR/LF/NUL.
    pub company: Option<String>,
    /// Job title as typed.
    pub job_title: Option<String>,
    /// The number as typed, kept even when it cannot be normalised.
    pub phone_raw: Option<String>,
    /// The number in E.164, when it could be normalised without guessing.
    pub phone: Option<Phone>,
    /// ISO 3166 alpha-2 country, when the source gave one.
    pub country: Option<String>,
    /// Where the lead came from (`landing_page`, `google`, a form id …).
    pub source: String,
    /// Marketing consent as captured by the form.
    pub consent: Consent,
    /// Form answers by key (company size, sector, budget, message …).
    pub answers: BTreeMap<String, serde_json::Value>,
    /// Engagement facts (visits, time on site, pages per visit, last activity …).
    pub behaviour: BTreeMap<String, serde_json::Value>,
    /// UTM parameters of the visit.
    pub utm: BTreeMap<String, String>,
}

impl Lead {
    /// The name to greet the person with: first name, else full name, else nothing.
    pub fn greeting_name(&self) -> Option<&str> {
        self.first_name
            .as_deref()
            .or(self.last_name.as_deref())
            .filter(|n| !n.trim().is_empty())
    }

    /// The text value of an answer, if it is a string or a number.
    pub fn answer_text(&self, key: &str) -> Option<String> {
        match self.answers.get(key)? {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A lead as it waits in the queue: the lead plus the facts of its delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadEvent {
    /// Unique id of this delivery, returned to the sender in the 202.
    pub event_id: String,
    /// When ingest accepted it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The lead itself.
    pub lead: Lead,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_identity_ignores_case_but_keeps_plus_tags() {
        let a = Email::parse("Ada.Example@Example.COM").unwrap();
        let b = Email::parse("  ada.example@example.com ").unwrap();
        let c = Email::parse("ADA.EXAMPLE+promo@example.com").unwrap();

        assert_eq!(a.normalized(), b.normalized());
        assert_ne!(a.normalized(), c.normalized());
        assert_eq!(a.as_str(), "Ada.Example@Example.COM");
    }

    #[test]
    fn idn_domain_is_punycoded_for_comparison_and_transport() {
        let email = Email::parse("zoe@münchen.example").unwrap();

        assert_eq!(email.normalized(), "zoe@xn--mnchen-3ya.example");
        assert_eq!(email.transport(), "zoe@xn--mnchen-3ya.example");
        assert_eq!(email.as_str(), "zoe@münchen.example");
    }

    #[test]
    fn header_breaking_and_malformed_addresses_are_refused() {
        for bad in [
            "eve@example.com\r\nBcc: x@example.net",
            "no-at-sign",
            "@example.com",
            "a@",
            "a..b@example.com",
            "осман@пример.example",
            "a b@example.com",
            "a@localhost",
            "a@127.0.0.1",
            "a@1.2",
        ] {
            assert!(Email::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn phone_needs_plus_or_country_hint() {
        assert_eq!(
            Phone::parse("07700 900123", Some("GB")).unwrap().as_str(),
            "+447700900123"
        );
        assert_eq!(
            Phone::parse("+1 (202) 555-0143", None).map(|p| p.0),
            Some("+12025550143".to_owned())
        );
        assert_eq!(Phone::parse("4512345678", None), None);
    }

    #[test]
    fn score_outside_range_is_an_error_quoting_the_value() {
        assert_eq!(
            Score::new(142).unwrap_err().0,
            "invalid score '142', expected 1..=100"
        );
        assert!(Score::new(0).is_err());
        assert_eq!(Score::clamped(250).value(), 100);
    }
}
