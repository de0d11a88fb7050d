//! What the HTTP LLM providers share: one client, the endpoint URL, the vendor's "wait this
//! long" hints, and failure classification that never carries the request's text or the key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ai::provider::{ChatRequest, ProviderError};

/// The longest wait taken from a vendor's hint. A longer hint is cut to this; the caller
/// decides whether to hold a worker that long or requeue.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long opening a connection may take. There is no overall timeout here: the caller
/// bounds each call with its own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an error body read: any vendor's JSON error fits, a proxy's page does not.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The most characters kept of a vendor's error message.
const MESSAGE_LIMIT: usize = 300;

/// The most characters kept of a vendor's error type, code or parameter name.
const FIELD_LIMIT: usize = 64;

/// A vendor message repeating this many characters of the request is taken to quote it.
const QUOTE_CHARS: usize = 20;

/// OpenAI's reset hints, as Go durations (`6m0s`).
const DURATION_RESETS: [&str; 2] = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"];

/// Anthropic's reset hints, as RFC 3339 instants.
const INSTANT_RESETS: [&str; 4] = [
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The HTTP client the providers share: rustls (aws-lc-rs), a 10 s connect
/// timeout, `nurture/<version>` as user agent, and no redirects.
///
/// Redirects are refused because reqwest drops only `Authorization` when one crosses hosts:
/// `x-api-key` and `api-key` would follow it. A 3xx comes back as a rejected request.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("nurture/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", root_cause(&e)))
}

/// `base_url` with `path` appended, e.g. `https://api.openai.com/v1` + `chat/completions`.
///
/// A trailing slash is tolerated and a query (Azure's `?api-version=…`) is kept.
pub fn endpoint(base_url: &str, path: &str) -> Result<Url, String> {
    let base = base_url.trim();
    let mut url = Url::parse(base).map_err(|e| format!("invalid base_url '{base}': {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("invalid base_url '{base}': expected http or https"));
    }

    url.path_segments_mut()
        .map_err(|()| format!("invalid base_url '{base}': it cannot take a path"))?
        .pop_if_empty()
        .extend(path.split('/'));
    Ok(url)
}

/// `base_url` as it may be shown in logs and `Debug`: any password in it masked.
pub fn shown_url(base_url: &str) -> String {
    match Url::parse(base_url.trim()) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => base_url.trim().to_owned(),
    }
}

/// A header value holding a key, marked sensitive so that reqwest never prints it.
pub fn secret_header(value: &str) -> Result<HeaderValue, String> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        "the api key has characters an HTTP header cannot carry (control or non-ASCII)".to_owned()
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// The texts an error message must never repeat: the key and every part of the prompt.
pub fn withheld<'a>(request: &'a ChatRequest, api_key: Option<&'a str>) -> Vec<&'a str> {
    let prompt = request.messages.iter().map(|m| m.content.as_str());
    api_key
        .into_iter()
        .chain([request.system.as_str()])
        .chain(prompt)
        .collect()
}

/// How long a vendor asked us to wait, from the headers of its reply; `now` dates the
/// instants some vendors send.
///
/// `retry-after-ms` wins, then `Retry-After` (seconds or an IMF-fixdate HTTP date); failing
/// both, the longest of the rate-limit reset hints (OpenAI's Go durations, Anthropic's RFC
/// 3339 instants). Unreadable values are skipped, instants past are zero, and the wait is
/// cut to [`MAX_RETRY_AFTER`] and rounded to the millisecond.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let until = |at: f64| (at - now).max(0.0);

    let seconds_or_date = |value: &str| decimal(value).or_else(|| http_date(value).map(until));
    let seconds = text_of(headers, "retry-after-ms")
        .and_then(decimal)
        .map(|ms| ms / 1000.0)
        .or_else(|| text_of(headers, "retry-after").and_then(seconds_or_date))
        .or_else(|| {
            let durations = DURATION_RESETS
                .iter()
                .filter_map(|name| text_of(headers, name));
            let instants = INSTANT_RESETS
                .iter()
                .filter_map(|name| text_of(headers, name));
            durations
                .filter_map(go_duration)
                .chain(instants.filter_map(rfc3339).map(until))
                .reduce(f64::max)
        })?;

    let millis = (seconds.min(MAX_RETRY_AFTER.as_secs_f64()) * 1000.0).round();
    Some(Duration::from_millis(millis as u64))
}

/// Classifies a failure to send a request or to read its reply.
pub fn transport_error(error: &reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        return ProviderError::Timeout;
    }
    if error.is_builder() {
        return ProviderError::Rejected(format!("request not built: {}", root_cause(error)));
    }
    if error.is_decode() {
        return ProviderError::BadReply(format!("reply not decoded: {}", root_cause(error)));
    }

    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_body() {
        "reply cut off"
    } else {
        "request failed"
    };
    ProviderError::Unavailable(format!("{what}: {}", root_cause(error)))
}

/// Parses a 2xx body as `T`, saying where it failed (`choices[0].message`) but never quoting
/// the body: the model's answer may repeat lead data.
pub fn parse_reply<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ProviderError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| unreadable(shape, &e.path().to_string(), e.inner()))?;
    deserializer.end().map_err(|e| unreadable(shape, ".", &e))?;
    Ok(value)
}

/// A `BadReply` naming the reply's shape, the place and the kind of error.
fn unreadable(shape: &str, path: &str, error: &serde_json::Error) -> ProviderError {
    let category = format!("{:?}", error.classify()).to_lowercase();
    ProviderError::BadReply(format!(
        "not a {shape}: {category} error at '{path}' (line {}, column {})",
        error.line(),
        error.column()
    ))
}

/// What a vendor's error reply said, cut to what is safe to keep: its status, the wait it
/// asked for, and the type, code, parameter and message of its JSON error. Nothing else of
/// the body is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorError {
    /// The HTTP status.
    pub status: StatusCode,
    /// How long the vendor asked us to wait (see [`retry_after`]).
    pub retry_after: Option<Duration>,
    /// `error.type` (`invalid_request_error`, `billing_error`).
    pub kind: Option<String>,
    /// `error.code` (`insufficient_quota`), a number written as text.
    pub code: Option<String>,
    /// `error.param` (`response_format`).
    pub param: Option<String>,
    /// `error.message`, at most 300 characters.
    pub message: Option<String>,
}

impl VendorError {
    /// Reads an error reply, taking at most 64 KiB of its body.
    pub async fn read(mut response: reqwest::Response) -> Self {
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());

        let mut body = Vec::new();
        // A body that breaks off is read as far as it came: it only explains the status.
        while body.len() < ERROR_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(ERROR_BODY_LIMIT);

        Self::parse(status, retry_after, &body)
    }

    /// Reads the error from a body: OpenAI's `{"error":{…}}`, Anthropic's
    /// `{"type":"error","error":{…}}`, `{"error":"text"}` or a flat `{"message":…}`.
    /// A body that is not JSON leaves every field empty.
    pub fn parse(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let error = json.get("error").filter(|e| e.is_object()).unwrap_or(&json);
        let field = |name: &str, limit: usize| error.get(name).and_then(|v| text(v, limit));

        let bare_message = json.get("error").filter(|e| e.is_string());
        let message = bare_message
            .and_then(|m| text(m, MESSAGE_LIMIT))
            .or_else(|| field("message", MESSAGE_LIMIT))
            .or_else(|| field("detail", MESSAGE_LIMIT));
        Self {
            status,
            retry_after,
            kind: field("type", FIELD_LIMIT),
            code: field("code", FIELD_LIMIT),
            param: field("param", FIELD_LIMIT),
            message,
        }
    }

    /// Whether the error's type or code is `name`.
    pub fn is(&self, name: &str) -> bool {
        self.kind.as_deref() == Some(name) || self.code.as_deref() == Some(name)
    }

    /// Whether any field mentions `needle`, ignoring case.
    pub fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        [&self.kind, &self.code, &self.param, &self.message]
            .into_iter()
            .flatten()
            .any(|field| field.to_lowercase().contains(&needle))
    }

    /// A one-line account for logs and `ProviderError`: `status 400 invalid_request_error
    /// (code) [param]: message`.
    ///
    /// A message that repeats any of `withheld` (see [`withheld`]) is left out, so that a
    /// server echoing the prompt or the key cannot carry them into logs or the database.
    pub fn describe(&self, withheld: &[&str]) -> String {
        let mut line = format!("status {}", self.status.as_u16());
        if let Some(kind) = &self.kind {
            line = format!("{line} {kind}");
        }
        if let Some(code) = self
            .code
            .as_ref()
            .filter(|c| self.kind.as_ref() != Some(*c))
        {
            line = format!("{line} ({code})");
        }
        if let Some(param) = &self.param {
            line = format!("{line} [{param}]");
        }

        match &self.message {
            _ if quotes_any(&line, withheld) => {
                let status = self.status.as_u16();
                format!("status {status} (details withheld: they quote the request)")
            }
            Some(message) if quotes_any(message, withheld) => {
                format!("{line}: (message withheld: it quotes the request)")
            }
            Some(message) => format!("{line}: {message}"),
            None => line,
        }
    }
}

/// At most `max_chars` characters of `text`, with `…` when cut.
pub fn truncated(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A JSON string or number as bounded text; anything else (null, "") is nothing.
fn text(value: &Value, limit: usize) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then(|| truncated(&text, limit))
}

/// Whether `text` repeats one of `secrets`: the whole of a short one (8 characters or more;
/// shorter ones are common words), or any 20-character stretch of a long one.
fn quotes_any(text: &str, secrets: &[&str]) -> bool {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let stretches: Vec<&str> = bounds
        .windows(QUOTE_CHARS + 1)
        .map(|w| &text[w[0]..w[QUOTE_CHARS]])
        .collect();

    secrets.iter().any(|secret| {
        if secret.chars().count() <= QUOTE_CHARS {
            secret.len() >= 8 && text.contains(secret)
        } else {
            stretches.iter().any(|stretch| secret.contains(stretch))
        }
    })
}

/// The innermost cause of an error: the part that says what went wrong (`Connection refused`).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    truncated(&cause.to_string(), MESSAGE_LIMIT)
}

/// A header's value as trimmed text, if it is ASCII.
fn text_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// A non-negative decimal number of digits and at most one point (`7`, `1.5`).
fn decimal(text: &str) -> Option<f64> {
    let well_formed = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    well_formed.then(|| text.parse().ok()).flatten()
}

/// Exactly `len` ASCII digits as a number.
fn digits(text: &str, len: usize) -> Option<i64> {
    let well_formed = text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| text.parse().ok()).flatten()
}

/// A Go duration (`1s`, `6m0s`, `20ms`, `1m30.5s`, `0`) in seconds. Negative ones are refused.
fn go_duration(text: &str) -> Option<f64> {
    if text == "0" {
        return Some(0.0);
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';

    let (mut rest, mut seconds) = (text, 0.0);
    while !rest.is_empty() {
        let (number, tail) = rest.split_at(rest.find(|c| !is_number(c))?);
        let (unit, tail) = tail.split_at(tail.find(is_number).unwrap_or(tail.len()));
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += decimal(number)? * scale;
        rest = tail;
    }
    (!text.is_empty()).then_some(seconds)
}

/// An RFC 3339 instant (`2026-12-03T15:30:05Z`, `…05.250+01:00`) in Unix seconds.
fn rfc3339(text: &str) -> Option<f64> {
    let (date, time) = text.split_once(['T', 't'])?;
    let (clock, offset) = match time.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0.0),
        None => {
            let (clock, zone) = time.split_at(time.rfind(['+', '-'])?);
            let (hours, minutes) = zone[1..].split_once(':')?;
            let (hours, minutes) = (digits(hours, 2)?, digits(minutes, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1.0 } else { 1.0 };
            (clock, sign * (hours * 3600 + minutes * 60) as f64)
        }
    };

    let (whole, fraction) = match clock.split_once('.') {
        Some((whole, fraction)) => (whole, decimal_fraction(fraction)?),
        None => (clock, 0.0),
    };
    let mut parts = date.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }

    let days = epoch_days(digits(year, 4)?, digits(month, 2)?, digits(day, 2)?)?;
    Some(days as f64 * 86400.0 + time_of_day(whole)? + fraction - offset)
}

/// The digits after a decimal point (`250` → 0.25); at least one.
fn decimal_fraction(text: &str) -> Option<f64> {
    let well_formed = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| decimal(&format!("0.{text}"))).flatten()
}

/// An IMF-fixdate HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) in Unix seconds. The obsolete
/// RFC 850 and asctime forms, which RFC 9110 forbids senders to use, are not read.
fn http_date(text: &str) -> Option<f64> {
    let (_weekday, rest) = text.split_once(", ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, "GMT"] = fields[..] else {
        return None;
    };

    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let days = epoch_days(digits(year, 4)?, month, digits(day, 2)?)?;
    Some(days as f64 * 86400.0 + time_of_day(clock)?)
}

/// `HH:MM:SS` in seconds since midnight (a leap second's `60` allowed).
fn time_of_day(text: &str) -> Option<f64> {
    let mut parts = text.split(':');
    let (hours, minutes, seconds) = (parts.next()?, parts.next()?, parts.next()?);
    let (hours, minutes, seconds) = (digits(hours, 2)?, digits(minutes, 2)?, digits(seconds, 2)?);
    let valid = parts.next().is_none() && hours < 24 && minutes < 60 && seconds <= 60;
    valid.then_some((hours * 3600 + minutes * 60 + seconds) as f64)
}

/// Days from 1970-01-01 to a date of the Gregorian calendar, or `None` for a date that does
/// not exist or comes before 1970 (no vendor hint points there).
fn epoch_days(year: i64, month: i64, day: i64) -> Option<i64> {
    const DAYS_BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        2 if is_leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || !(1..=month_days).contains(&day) {
        return None;
    }

    let leap_days_before = |y: i64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let leap_day_passed = i64::from(is_leap && month > 2);
    let whole_years = 365 * (year - 1970) + leap_days_before(year) - leap_days_before(1970);
    Some(whole_years + DAYS_BEFORE_MONTH[(month - 1) as usize] + leap_day_passed + day - 1)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderName;

    use super::*;

    /// 2026-12-03T15:30:05Z.
    const DECEMBER_3: u64 = 1_796_311_805;

    fn at(unix_seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_seconds)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn wait(pairs: &[(&str, &str)], now: SystemTime) -> Option<Duration> {
        retry_after(&headers(pairs), now)
    }

    #[test]
    fn retry_after_ms_is_read_as_milliseconds() {
        assert_eq!(
            wait(&[("retry-after-ms", "1500")], at(0)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            wait(&[("retry-after-ms", "22.4")], at(0)),
            Some(Duration::from_millis(22))
        );
    }

    #[test]
    fn retry_after_seconds_may_be_fractional() {
        assert_eq!(
            wait(&[("Retry-After", "7")], at(0)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait(&[("retry-after", "1.5")], at(0)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(wait(&[("retry-after", " 0 ")], at(0)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_http_date_counts_from_now() {
        let now = at(784_111_777 - 30);

        let wait = wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], now);

        assert_eq!(wait, Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_date_already_past_means_no_wait() {
        let now = at(784_111_777 + 30);

        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], now),
            Some(Duration::ZERO)
        );
        let reset = [("anthropic-ratelimit-tokens-reset", "2026-12-03T15:30:05Z")];
        assert_eq!(wait(&reset, at(DECEMBER_3 + 5)), Some(Duration::ZERO));
    }

    #[test]
    fn openai_reset_hints_are_go_durations() {
        let cases = [
            ("1s", 1000),
            ("6m0s", 360_000),
            ("20ms", 20),
            ("1m30.5s", 90_500),
            ("0.5s", 500),
            ("2m3.5s", 123_500),
            ("1h", 3_600_000),
            ("250us", 0),
            ("0", 0),
        ];
        for (value, millis) in cases {
            let wait = wait(&[("x-ratelimit-reset-requests", value)], at(0));
            assert_eq!(wait, Some(Duration::from_millis(millis)), "{value}");
        }
    }

    #[test]
    fn anthropic_reset_hints_are_rfc3339_instants() {
        let cases = [
            ("2026-12-03T15:30:17Z", 12_000),
            ("2026-12-03T15:30:17.250Z", 12_250),
            ("2026-12-03t15:30:17z", 12_000),
            ("2026-12-03T16:30:17+01:00", 12_000),
            ("2026-12-03T14:30:17-01:00", 12_000),
        ];
        for (value, millis) in cases {
            let wait = wait(
                &[("anthropic-ratelimit-requests-reset", value)],
                at(DECEMBER_3),
            );
            assert_eq!(wait, Some(Duration::from_millis(millis)), "{value}");
        }
    }

    #[test]
    fn dates_across_leap_days_are_counted_right() {
        assert_eq!(rfc3339("2024-02-29T23:59:59Z"), Some(1_709_251_199.0));
        assert_eq!(rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(rfc3339("1900-03-01T00:00:00Z"), None);
    }

    #[test]
    fn the_longest_reset_hint_wins() {
        let pairs = [
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2026-12-03T15:31:05Z",
            ),
        ];

        assert_eq!(wait(&pairs, at(DECEMBER_3)), Some(Duration::from_secs(360)));
    }

    #[test]
    fn retry_after_ms_beats_retry_after_which_beats_reset_hints() {
        let all = [
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("retry-after", "7"),
            ("retry-after-ms", "250"),
        ];

        assert_eq!(wait(&all, at(0)), Some(Duration::from_millis(250)));
        assert_eq!(wait(&all[..2], at(0)), Some(Duration::from_secs(7)));
        assert_eq!(wait(&all[..1], at(0)), Some(Duration::from_secs(360)));
    }

    #[test]
    fn waits_are_capped_at_an_hour() {
        let huge = "9".repeat(400);

        assert_eq!(
            wait(&[("retry-after", "86400")], at(0)),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            wait(&[("retry-after-ms", huge.as_str())], at(0)),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-tokens", "100h")], at(0)),
            Some(MAX_RETRY_AFTER)
        );
        let far = [("anthropic-ratelimit-tokens-reset", "9999-12-31T23:59:59Z")];
        assert_eq!(wait(&far, at(DECEMBER_3)), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn garbage_hints_are_ignored() {
        let garbage_everywhere = [
            "",
            "soon",
            "-5",
            "+5",
            "NaN",
            "inf",
            "1e3",
            "1.2.3",
            ".",
            "0x10",
            "5 5",
            "-1s",
            "1x",
            "s",
            "1s-",
            "2026-13-03T15:30:05Z",
            "2026-12-03T25:30:05Z",
            "2026-12-03T15:30:05",
            "2026-12-03 15:30:05Z",
            "2026-12-03T15:30:05+1:00",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
        ];
        let names = [
            "retry-after-ms",
            "retry-after",
            "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-tokens-reset",
        ];
        for value in garbage_everywhere {
            for name in names {
                assert_eq!(
                    wait(&[(name, value)], at(DECEMBER_3)),
                    None,
                    "{name}: {value:?}"
                );
            }
        }
    }

    #[test]
    fn each_hint_is_read_only_in_its_own_format() {
        let misplaced = [
            ("retry-after", "7s"),
            ("retry-after", "2026-12-03T15:30:17Z"),
            ("retry-after-ms", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("x-ratelimit-reset-requests", "5"),
            ("x-ratelimit-reset-requests", "2026-12-03T15:30:17Z"),
            ("anthropic-ratelimit-requests-reset", "7s"),
        ];
        for (name, value) in misplaced {
            assert_eq!(
                wait(&[(name, value)], at(DECEMBER_3)),
                None,
                "{name}: {value:?}"
            );
        }
    }

    #[test]
    fn a_garbage_hint_gives_way_to_the_next_one() {
        let pairs = [("retry-after-ms", "later"), ("retry-after", "7")];

        assert_eq!(wait(&pairs, at(0)), Some(Duration::from_secs(7)));
    }

    #[test]
    fn non_ascii_header_values_are_ignored() {
        let mut map = HeaderMap::new();
        map.insert("retry-after", HeaderValue::from_bytes(b"7\xff").unwrap());

        assert_eq!(retry_after(&map, at(0)), None);
        assert_eq!(retry_after(&HeaderMap::new(), at(0)), None);
    }

    #[test]
    fn openai_error_bodies_are_read() {
        let body = br#"{"error":{"message":"You exceeded your current quota.",
            "type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;

        let error = VendorError::parse(StatusCode::TOO_MANY_REQUESTS, None, body);

        assert!(error.is("insufficient_quota"));
        assert_eq!(error.param, None);
        assert_eq!(
            error.message.as_deref(),
            Some("You exceeded your current quota.")
        );
        let line = "status 429 insufficient_quota: You exceeded your current quota.";
        assert_eq!(error.describe(&[]), line);
    }

    #[test]
    fn anthropic_and_other_error_shapes_are_read() {
        let anthropic = br#"{"type":"error",
            "error":{"type":"billing_error","message":"Your credit balance is too low"}}"#;
        let flat =
            br#"{"object":"error","message":"model not found","type":"NotFoundError","code":404}"#;
        let bare = br#"{"error":"model 'x' not found"}"#;

        let anthropic = VendorError::parse(StatusCode::BAD_REQUEST, None, anthropic);
        let flat = VendorError::parse(StatusCode::NOT_FOUND, None, flat);
        let bare = VendorError::parse(StatusCode::NOT_FOUND, None, bare);

        assert_eq!(anthropic.kind.as_deref(), Some("billing_error"));
        assert!(anthropic.mentions("CREDIT BALANCE"));
        assert_eq!(
            flat.describe(&[]),
            "status 404 NotFoundError (404): model not found"
        );
        assert_eq!(bare.describe(&[]), "status 404: model 'x' not found");
    }

    #[test]
    fn bodies_that_are_not_json_keep_nothing() {
        let page = b"<html><body>502 Bad Gateway</body></html>";

        let error = VendorError::parse(StatusCode::BAD_GATEWAY, None, page);

        assert_eq!(error.describe(&[]), "status 502");
        assert_eq!(
            (error.kind, error.code, error.param, error.message),
            (None, None, None, None)
        );
    }

    #[test]
    fn long_messages_are_cut_to_300_characters() {
        let body = serde_json::json!({ "error": { "message": "é".repeat(5000) } }).to_string();

        let error = VendorError::parse(StatusCode::BAD_REQUEST, None, body.as_bytes());

        let message = error.message.unwrap();
        assert_eq!(message.chars().count(), MESSAGE_LIMIT + 1);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn messages_quoting_the_prompt_or_the_key_are_withheld() {
        let prompt = "Jane Roe from Acme wants a demo next Tuesday at 10am";
        let key = "sk-test-0123456789abcdef";
        let echo = format!(
            r#"{{"error":{{"message":"bad input: '{}'","type":"x"}}}}"#,
            &prompt[5..40]
        );
        let keyed = format!(r#"{{"error":{{"message":"key {key} unknown","type":"x"}}}}"#);

        let echo = VendorError::parse(StatusCode::BAD_REQUEST, None, echo.as_bytes());
        let keyed = VendorError::parse(StatusCode::UNAUTHORIZED, None, keyed.as_bytes());

        let withheld = [key, "You score leads.", prompt];
        assert_eq!(
            echo.describe(&withheld),
            "status 400 x: (message withheld: it quotes the request)"
        );
        assert_eq!(
            keyed.describe(&withheld),
            "status 401 x: (message withheld: it quotes the request)"
        );
        assert!(
            echo.mentions("bad input"),
            "the raw fields stay usable for classification"
        );
    }

    #[test]
    fn endpoints_tolerate_a_trailing_slash_and_keep_a_query() {
        let plain = endpoint("https://api.openai.com/v1/", "chat/completions").unwrap();
        let azure = endpoint(
            "https://r.openai.azure.com/openai/v1?api-version=preview",
            "chat/completions",
        );

        assert_eq!(plain.as_str(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(
            azure.unwrap().as_str(),
            "https://r.openai.azure.com/openai/v1/chat/completions?api-version=preview"
        );
        assert!(endpoint("ftp://example.com/v1", "messages").is_err());
        assert!(endpoint("not a url", "messages").is_err());
    }

    #[test]
    fn shown_urls_mask_a_password() {
        assert_eq!(
            shown_url("https://me:hunter22@proxy.example/v1"),
            "https://me:***@proxy.example/v1"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:11434/v1"),
            "http://127.0.0.1:11434/v1"
        );
    }

    #[test]
    fn keys_that_cannot_be_headers_are_refused_without_being_quoted() {
        let error = secret_header("sk-bad\nkey").unwrap_err();

        assert!(!error.contains("sk-bad"));
        assert!(secret_header("sk-good").unwrap().is_sensitive());
    }

    #[test]
    fn reply_parse_errors_name_the_place_not_the_content() {
        let body = br#"{"choices":[{"message":{"content":98765}}]}"#;

        #[derive(Debug, serde::Deserialize)]
        struct Reply {
            #[allow(dead_code)]
            choices: Vec<Choice>,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Choice {
            #[allow(dead_code)]
            message: Message,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Message {
            #[allow(dead_code)]
            content: String,
        }

        let error = parse_reply::<Reply>(body, "chat completion").unwrap_err();
        let trailing = parse_reply::<Value>(b"{} secret", "chat completion").unwrap_err();

        let ProviderError::BadReply(reason) = error else {
            panic!("{error:?}")
        };
        assert!(
            reason.starts_with("not a chat completion: data error at 'choices[0].message.content'"),
            "{reason}"
        );
        assert!(!reason.contains("98765"), "{reason}");
        assert!(matches!(trailing, ProviderError::BadReply(r) if !r.contains("secret")));
    }
}
