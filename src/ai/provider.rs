//! The one trait every LLM vendor sits behind, and the vendor-neutral request and reply.
//! A provider only speaks its wire format and classifies failures; rate limits, timeouts,
//! the circuit breaker, the budget and cost live in `ai::client`, shared by all vendors.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

/// Who said a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Our side: the instructions' data and any re-ask.
    User,
    /// The model's earlier answer (kept when we re-ask).
    Assistant,
}

/// One message of the conversation after the system prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// Who says it.
    pub role: Role,
    /// The text.
    pub content: String,
}

/// The JSON shape the answer must have, for vendors that can enforce it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSchema {
    /// A short name (`lead_score`, `lead_message`, `draft_verdict`): letters, digits, `_`.
    pub name: String,
    /// A JSON Schema object.
    pub schema: Value,
}

/// A vendor-neutral chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model name as the vendor knows it.
    pub model: String,
    /// The system prompt: our instructions, never lead data.
    pub system: String,
    /// The conversation; the first message is the user's.
    pub messages: Vec<ChatMessage>,
    /// Structured output, when the answer must be JSON of this shape.
    pub schema: Option<OutputSchema>,
    /// Upper bound on the answer's tokens.
    pub max_tokens: u32,
    /// Sampling temperature (0 for scoring).
    pub temperature: f32,
}

impl ChatRequest {
    /// One question (`system`, then one user message) whose answer must be JSON of `schema`.
    pub fn structured(
        model: String,
        system: String,
        user: String,
        schema: OutputSchema,
        max_tokens: u32,
        temperature: f32,
    ) -> Self {
        Self {
            model,
            system,
            messages: vec![ChatMessage {
                role: Role::User,
                content: user,
            }],
            schema: Some(schema),
            max_tokens,
            temperature,
        }
    }
}

/// What the model used, as the vendor reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
}

/// A vendor-neutral answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The answer's text. For structured output this is the JSON text (for Anthropic tool
    /// use, the tool input serialised).
    pub text: String,
    /// The model that answered, as the vendor names it.
    pub model: String,
    /// Tokens used.
    pub usage: Usage,
}

/// Why a call failed, classified so the caller knows whether to wait, retry or give up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// 429 (not a quota error): try again after `retry_after` (from `Retry-After`,
    /// `retry-after-ms` or the vendor's rate-limit reset headers), if the vendor said.
    #[error("rate limited (retry after {retry_after:?})")]
    RateLimited {
        /// How long the vendor asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The account is out of credit (`insufficient_quota`, a billing error). Not retried.
    #[error("quota exhausted: {0}")]
    QuotaExhausted(String),
    /// The key was refused (401, 403). Not retried.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// No answer within the call's deadline.
    #[error("timed out")]
    Timeout,
    /// The vendor is down or overloaded (5xx, 529, connection refused): worth a later try.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The vendor refused the request itself (another 4xx).
    #[error("request rejected: {0}")]
    Rejected(String),
    /// A 2xx whose body we could not read.
    #[error("unreadable reply: {0}")]
    BadReply(String),
}

impl ProviderError {
    /// A short, bounded label for metrics and the `llm_calls.status` column.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::QuotaExhausted(_) => "quota",
            ProviderError::Unauthorized(_) => "unauthorized",
            ProviderError::Timeout => "timeout",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Rejected(_) => "rejected",
            ProviderError::BadReply(_) => "bad_reply",
        }
    }
}

/// An LLM vendor's chat API.
#[async_trait]
pub trait LlmProvider: Send + Sync {
    /// `openai` or `anthropic` (or a test's name): a bounded metric label.
    fn name(&self) -> &'static str;

    /// Sends one request. Implementations make exactly one HTTP call and never retry: the
    /// caller decides, knowing the rate limits and the queue.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ProviderError>;
}
