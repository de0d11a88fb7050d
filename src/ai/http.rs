//! What the HTTP LLM providers share: one client, the endpoint URL, and failure
//! classification that never carries the request's text or the key.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ai::provider::{ChatRequest, ProviderError};
use crate::ai::retry_after::retry_after;

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
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            // A query can carry a key (`?key=…`, `?api-key=…`).
            if url.query().is_some() {
                url.set_query(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "(unparseable url)".to_owned(),
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
    /// How long the vendor asked us to wait (see `ai::retry_after`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            shown_url("https://r.openai.azure.com/openai/v1?key=SECRET2"),
            "https://r.openai.azure.com/openai/v1?***"
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
