//! The Anthropic Messages API client. Structured output goes through a forced tool: the
//! tool's input schema is the answer's, and the tool call's input is the answer.

use std::fmt;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ai::http::{self, VendorError};
use crate::ai::provider::{ChatReply, ChatRequest, LlmProvider, ProviderError, Role, Usage};

/// The API version this client speaks.
const API_VERSION: &str = "2023-06-01";

/// A client of `POST {base_url}/messages`.
pub struct AnthropicProvider {
    client: reqwest::Client,
    endpoint: Url,
    /// The base URL as it may be shown (any password masked).
    base_url: String,
    api_key: Option<(String, HeaderValue)>,
}

impl AnthropicProvider {
    /// A client of the server at `base_url` (`https://api.anthropic.com/v1`). Without a key
    /// no `x-api-key` is sent (a gateway that adds its own).
    ///
    /// Fails on a base URL that is not http(s), a key no header can carry, or a client that
    /// cannot be built.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, String> {
        let endpoint = http::endpoint(base_url, "messages")?;
        let api_key = match api_key {
            Some(key) => {
                let header = http::secret_header(&key)?;
                Some((key, header))
            }
            None => None,
        };

        Ok(Self {
            client: http::client()?,
            endpoint,
            base_url: http::shown_url(base_url),
            api_key,
        })
    }
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl LlmProvider for AnthropicProvider {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    #[tracing::instrument(name = "anthropic_chat", skip_all, fields(model = %request.model))]
    async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ProviderError> {
        let mut call = self
            .client
            .post(self.endpoint.clone())
            .header("anthropic-version", API_VERSION)
            .json(&wire_request(request));
        if let Some((_, header)) = &self.api_key {
            call = call.header("x-api-key", header);
        }
        let response = call.send().await.map_err(|e| http::transport_error(&e))?;

        if !response.status().is_success() {
            let error = VendorError::read(response).await;
            let key = self.api_key.as_ref().map(|(key, _)| key.as_str());
            return Err(classify(&error, &http::withheld(request, key)));
        }

        let body = response
            .bytes()
            .await
            .map_err(|e| http::transport_error(&e))?;
        read_reply(&body, request)
    }
}

/// Maps an error reply to what the caller should do.
fn classify(error: &VendorError, withheld: &[&str]) -> ProviderError {
    let detail = || error.describe(withheld);
    let is_billing = error.is("billing_error") || error.mentions("credit balance");
    match error.status.as_u16() {
        401 | 403 => ProviderError::Unauthorized(detail()),
        429 => ProviderError::RateLimited {
            retry_after: error.retry_after,
        },
        402 => ProviderError::QuotaExhausted(detail()),
        400..=499 if is_billing => ProviderError::QuotaExhausted(detail()),
        // 529 is Anthropic's "overloaded".
        500..=599 => ProviderError::Unavailable(detail()),
        _ => ProviderError::Rejected(detail()),
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'static str,
    input_schema: &'a Value,
}

#[derive(Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

/// The request body: the system prompt apart (left out when empty), the conversation as
/// plain strings (a re-ask carries the model's earlier answer as an assistant turn), and,
/// for structured output, one tool the model must call.
fn wire_request(request: &ChatRequest) -> WireRequest<'_> {
    let messages = request
        .messages
        .iter()
        .map(|m| WireMessage {
            role: match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
            content: &m.content,
        })
        .collect();

    let schema = request.schema.as_ref();
    let tools = schema.map(|s| Tool {
        name: &s.name,
        description: "Record the answer.",
        input_schema: &s.schema,
    });
    WireRequest {
        model: &request.model,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        system: Some(request.system.as_str()).filter(|s| !s.is_empty()),
        messages,
        tools: tools.into_iter().collect(),
        tool_choice: schema.map(|s| ToolChoice {
            kind: "tool",
            name: &s.name,
        }),
    }
}

#[derive(Deserialize)]
struct WireReply {
    model: Option<String>,
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        input: Value,
    },
    /// Thinking and any block type added later: not part of the answer.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// The first tool call's input as JSON text, or else the text blocks joined; the model that
/// answered and the tokens it reports (zero when none are).
fn read_reply(body: &[u8], request: &ChatRequest) -> Result<ChatReply, ProviderError> {
    let reply: WireReply = http::parse_reply(body, "message")?;
    if reply.stop_reason.as_deref() == Some("refusal") {
        return Err(ProviderError::BadReply(
            "the model refused to answer".to_owned(),
        ));
    }

    let tool_input = reply.content.iter().find_map(|block| match block {
        Block::ToolUse { input } => Some(input),
        _ => None,
    });
    let text = match tool_input {
        Some(input) => serde_json::to_string(input)
            .map_err(|e| ProviderError::BadReply(format!("tool input not serialised: {e}")))?,
        None => answer_text(&reply)?,
    };

    let usage = reply.usage.map_or(Usage::default(), |u| Usage {
        input_tokens: u.input_tokens.unwrap_or(0),
        output_tokens: u.output_tokens.unwrap_or(0),
    });
    Ok(ChatReply {
        text,
        model: reply.model.unwrap_or_else(|| request.model.clone()),
        usage,
    })
}

/// The text blocks joined, or a `BadReply` when there are none.
fn answer_text(reply: &WireReply) -> Result<String, ProviderError> {
    let texts: Vec<&str> = reply
        .content
        .iter()
        .filter_map(|block| match block {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    if texts.is_empty() {
        let reason = reply
            .stop_reason
            .as_deref()
            .map_or("none".to_owned(), |r| http::truncated(r, 40));
        return Err(ProviderError::BadReply(format!(
            "the reply has no text (stop_reason {reason})"
        )));
    }
    Ok(texts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_base_url_and_never_the_key() {
        let provider = AnthropicProvider::new(
            "https://api.anthropic.com/v1",
            Some("sk-ant-secret".to_owned()),
        )
        .unwrap();

        let shown = format!("{provider:?}");

        assert!(shown.contains("https://api.anthropic.com/v1"), "{shown}");
        assert!(!shown.contains("sk-ant-secret"), "{shown}");
    }
}
