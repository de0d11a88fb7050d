//! The chat-completions client: OpenAI itself, Azure OpenAI, and the servers that copy its
//! wire format (Ollama, vLLM, llama.cpp).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

use crate::ai::http::{self, VendorError};
use crate::ai::provider::{
    ChatReply, ChatRequest, LlmProvider, OutputSchema, ProviderError, Role, Usage,
};

/// Which header carries the API key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiKeyHeader {
    /// `Authorization: Bearer <key>`: OpenAI and most compatible servers.
    #[default]
    Authorization,
    /// `api-key: <key>`: Azure OpenAI.
    ApiKey,
}

/// A client of `POST {base_url}/chat/completions`.
///
/// Structured output is asked for as a strict `json_schema`. A server that answers 400
/// naming `response_format` or `json_schema` lacks it: the same call is sent once more
/// with `json_object`, and every later call goes straight to `json_object`. This is the
/// only retry a provider makes. Either way the caller checks the answer's shape; the
/// prompts, not this client, tell the model the fields it must fill.
pub struct OpenAiProvider {
    client: reqwest::Client,
    endpoint: Url,
    /// The base URL as it may be shown (any password masked).
    base_url: String,
    auth: Option<(HeaderName, HeaderValue)>,
    /// Kept only to withhold vendor messages that echo it.
    api_key: Option<String>,
    /// Set once a server has refused `json_schema`.
    json_object_only: AtomicBool,
}

impl OpenAiProvider {
    /// A client of the server at `base_url` (`https://api.openai.com/v1`). Without a key no
    /// auth header is sent (Ollama, llama.cpp).
    ///
    /// Fails on a base URL that is not http(s), a key no header can carry, or a client that
    /// cannot be built.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        api_key_header: ApiKeyHeader,
    ) -> Result<Self, String> {
        let endpoint = http::endpoint(base_url, "chat/completions")?;
        let auth = match (&api_key, api_key_header) {
            (None, _) => None,
            (Some(key), ApiKeyHeader::Authorization) => Some((
                AUTHORIZATION,
                http::secret_header(&format!("Bearer {key}"))?,
            )),
            (Some(key), ApiKeyHeader::ApiKey) => Some((
                HeaderName::from_static("api-key"),
                http::secret_header(key)?,
            )),
        };

        Ok(Self {
            client: http::client()?,
            endpoint,
            base_url: http::shown_url(base_url),
            auth,
            api_key,
            json_object_only: AtomicBool::new(false),
        })
    }

    /// Sends one request in `format` and reads the answer.
    async fn exchange(
        &self,
        request: &ChatRequest,
        format: Format<'_>,
    ) -> Result<ChatReply, Failure> {
        let mut call = self
            .client
            .post(self.endpoint.clone())
            .json(&wire_request(request, format));
        if let Some((name, value)) = &self.auth {
            call = call.header(name, value);
        }
        let response = call
            .send()
            .await
            .map_err(|e| Failure::Provider(http::transport_error(&e)))?;

        if !response.status().is_success() {
            let error = VendorError::read(response).await;
            if matches!(format, Format::JsonSchema(_)) && lacks_json_schema(&error) {
                return Err(Failure::SchemaRefused);
            }
            let withheld = http::withheld(request, self.api_key.as_deref());
            return Err(Failure::Provider(classify(&error, &withheld)));
        }

        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::Provider(http::transport_error(&e)))?;
        read_reply(&body, request).map_err(Failure::Provider)
    }

    /// How this call asks for structure, given what the server has shown it supports.
    fn format_for<'a>(&self, request: &'a ChatRequest) -> Format<'a> {
        match &request.schema {
            None => Format::Free,
            Some(_) if self.json_object_only.load(Ordering::Relaxed) => Format::JsonObject,
            Some(schema) => Format::JsonSchema(schema),
        }
    }
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    #[tracing::instrument(name = "openai_chat", skip_all, fields(model = %request.model))]
    async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ProviderError> {
        match self.exchange(request, self.format_for(request)).await {
            Err(Failure::SchemaRefused) => {
                self.json_object_only.store(true, Ordering::Relaxed);
                info!(base_url = %self.base_url, "no json_schema output here, using json_object");
                self.exchange(request, Format::JsonObject)
                    .await
                    .map_err(Failure::into_error)
            }
            other => other.map_err(Failure::into_error),
        }
    }
}

/// How a request asks for structured output.
#[derive(Debug, Clone, Copy)]
enum Format<'a> {
    /// Plain text.
    Free,
    /// A strict JSON schema.
    JsonSchema(&'a OutputSchema),
    /// Any JSON object: for servers without `json_schema`.
    JsonObject,
}

/// Why one exchange failed.
enum Failure {
    /// The server does not know `json_schema` (only returned for that format).
    SchemaRefused,
    /// Any other failure, classified.
    Provider(ProviderError),
}

impl Failure {
    fn into_error(self) -> ProviderError {
        match self {
            // Not produced for the json_object retry; kept total rather than trusted.
            Failure::SchemaRefused => {
                ProviderError::Rejected("the server refused structured output".to_owned())
            }
            Failure::Provider(error) => error,
        }
    }
}

/// Whether a refusal says the server lacks `json_schema` rather than something else.
///
/// OpenAI answers a schema it cannot enforce with "Invalid schema for response_format …":
/// that is our bug, not a missing feature, so it is not taken as one (falling back would
/// hide it for the life of the process).
fn lacks_json_schema(error: &VendorError) -> bool {
    let about_format = error.mentions("response_format") || error.mentions("json_schema");
    let bad_schema = error.mentions("invalid schema");
    error.status.as_u16() == 400 && about_format && !bad_schema
}

/// Maps an error reply to what the caller should do.
fn classify(error: &VendorError, withheld: &[&str]) -> ProviderError {
    let detail = || error.describe(withheld);
    match error.status.as_u16() {
        401 | 403 => ProviderError::Unauthorized(detail()),
        429 if error.is("insufficient_quota") => ProviderError::QuotaExhausted(detail()),
        429 => ProviderError::RateLimited {
            retry_after: error.retry_after,
        },
        402 => ProviderError::QuotaExhausted(detail()),
        408 | 409 | 500..=599 => ProviderError::Unavailable(detail()),
        _ => ProviderError::Rejected(detail()),
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    /// `max_tokens`, not OpenAI's newer `max_completion_tokens`: older vLLM and llama.cpp
    /// know only this one. OpenAI still takes it, except from its reasoning models (o1, o3…),
    /// which answer 400 and so cannot be used through this client yet.
    max_tokens: u32,
    temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    JsonSchema { json_schema: JsonSchema<'a> },
    JsonObject,
}

#[derive(Serialize)]
struct JsonSchema<'a> {
    name: &'a str,
    schema: &'a Value,
    strict: bool,
}

/// The request body: the system prompt first (left out when empty), then the conversation.
fn wire_request<'a>(request: &'a ChatRequest, format: Format<'a>) -> WireRequest<'a> {
    let system = Some(request.system.as_str()).filter(|s| !s.is_empty());
    let system = system.map(|content| WireMessage {
        role: "system",
        content,
    });
    let conversation = request.messages.iter().map(|m| WireMessage {
        role: match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        },
        content: &m.content,
    });

    let response_format = match format {
        Format::Free => None,
        Format::JsonSchema(schema) => Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchema {
                name: &schema.name,
                schema: &schema.schema,
                strict: true,
            },
        }),
        Format::JsonObject => Some(ResponseFormat::JsonObject),
    };
    WireRequest {
        model: &request.model,
        messages: system.into_iter().chain(conversation).collect(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        response_format,
    }
}

#[derive(Deserialize)]
struct WireReply {
    model: Option<String>,
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireAnswer,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireAnswer {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// The first choice's text, the model that answered and the tokens it reports (zero when
/// the server reports none).
fn read_reply(body: &[u8], request: &ChatRequest) -> Result<ChatReply, ProviderError> {
    let reply: WireReply = http::parse_reply(body, "chat completion")?;
    let usage = reply.usage.map_or(Usage::default(), |u| Usage {
        input_tokens: u.prompt_tokens.unwrap_or(0),
        output_tokens: u.completion_tokens.unwrap_or(0),
    });
    let Some(choice) = reply.choices.into_iter().next() else {
        return Err(ProviderError::BadReply(
            "the reply has no choices".to_owned(),
        ));
    };

    // The refusal's own words are not kept: they may repeat the lead's.
    if choice.message.refusal.is_some_and(|r| !r.trim().is_empty()) {
        return Err(ProviderError::BadReply(
            "the model refused to answer".to_owned(),
        ));
    }
    let Some(text) = choice.message.content else {
        let reason = choice
            .finish_reason
            .map_or("none".to_owned(), |r| http::truncated(&r, 40));
        return Err(ProviderError::BadReply(format!(
            "the reply has no content (finish_reason {reason})"
        )));
    };

    Ok(ChatReply {
        text,
        model: reply.model.unwrap_or_else(|| request.model.clone()),
        usage,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn api_key_header_reads_its_config_spelling() {
        let parsed: Vec<ApiKeyHeader> =
            serde_json::from_value(json!(["authorization", "api-key"])).unwrap();

        assert_eq!(parsed, [ApiKeyHeader::Authorization, ApiKeyHeader::ApiKey]);
        assert_eq!(ApiKeyHeader::default(), ApiKeyHeader::Authorization);
        assert!(serde_json::from_value::<ApiKeyHeader>(json!("bearer")).is_err());
    }

    #[test]
    fn debug_shows_the_base_url_and_never_the_key() {
        let provider = OpenAiProvider::new(
            "https://api.openai.com/v1/",
            Some("sk-secret-123".to_owned()),
            ApiKeyHeader::Authorization,
        )
        .unwrap();

        let shown = format!("{provider:?}");

        assert!(shown.contains("https://api.openai.com/v1/"), "{shown}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
    }
}
