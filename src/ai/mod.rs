//! Scorers behind one trait. The built-in points model is the offline default; LLM providers
//! and a trained statistical model plug in behind the same `Scorer`.

pub mod answer;
pub mod anthropic;
pub mod client;
pub mod http;
pub mod injection;
pub mod limits;
pub mod openai;
pub mod points;
pub mod prompts;
pub mod provider;
pub mod scoring;
pub mod writer;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::lead::{Lead, Score};

/// A propensity score with what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreCard {
    /// 1 to 100.
    pub score: Score,
    /// The factors that weighed most, strongest first.
    pub reasoning: Vec<String>,
    /// How the message should sound.
    pub suggested_tone: String,
    /// 0 to 1: how much the scorer trusts its own score.
    pub confidence: f64,
    /// Which scorer produced it.
    pub model: String,
    /// Reasons a human must see the drafts whatever the confidence (lead text that reads as
    /// instructions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub review_flags: Vec<String>,
    /// What lowered the confidence (an LLM fallback, a score gap), for the review reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The parts behind the score: mode, each scorer's score and confidence, the weights.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub parts: serde_json::Value,
    /// The prompt version, when an LLM answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<String>,
    /// The LLM's last raw answer, as received (stored, never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_answer: Option<String>,
}

impl ScoreCard {
    /// A card with nothing but the score's own fields set.
    pub fn plain(
        score: Score,
        reasoning: Vec<String>,
        suggested_tone: String,
        confidence: f64,
        model: String,
    ) -> Self {
        Self {
            score,
            reasoning,
            suggested_tone,
            confidence,
            model,
            review_flags: Vec::new(),
            notes: Vec::new(),
            parts: serde_json::Value::Null,
            prompt_version: None,
            raw_answer: None,
        }
    }
}

/// A scorer could not produce a score.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Worth another attempt later (a provider timed out or rate-limited us).
    #[error("scorer unavailable: {0}")]
    Unavailable(String),
}

/// Anything that turns a lead into a score card.
#[async_trait]
pub trait Scorer: Send + Sync {
    /// Scores one lead.
    async fn score(&self, lead: &Lead) -> Result<ScoreCard, ScoreError>;
}

/// The day's LLM spend as the CRM store records it (shared by every process).
pub struct StoreLedger(pub std::sync::Arc<dyn crate::store::Store>);

#[async_trait]
impl client::SpendLedger for StoreLedger {
    async fn spent_since(&self, since_ms: i64) -> Result<f64, crate::store::StoreError> {
        self.0.llm_spent_since(since_ms).await
    }
}

/// The process's LLM client for `settings`, or `None` for the built-in provider. The API key
/// is read here, from the variable `llm.api_key_env` names, and kept only in the provider.
pub fn connect(
    settings: &crate::config::LlmSettings,
    ledger: std::sync::Arc<dyn client::SpendLedger>,
) -> anyhow::Result<Option<std::sync::Arc<client::LlmClient>>> {
    use crate::config::LlmProviderKind;
    use std::sync::Arc;

    if settings.provider == LlmProviderKind::Builtin {
        return Ok(None);
    }
    let key = settings
        .effective_key_env()
        .map(|name| {
            std::env::var(&name)
                .map_err(|_| anyhow::anyhow!("llm.api_key_env: the variable {name} is not set"))
        })
        .transpose()?;
    let base = settings.effective_base_url();
    let provider: Arc<dyn provider::LlmProvider> = match settings.provider {
        LlmProviderKind::Builtin => return Ok(None),
        LlmProviderKind::Openai => Arc::new(
            openai::OpenAiProvider::new(&base, key, settings.api_key_header)
                .map_err(anyhow::Error::msg)?,
        ),
        LlmProviderKind::Anthropic => {
            Arc::new(anthropic::AnthropicProvider::new(&base, key).map_err(anyhow::Error::msg)?)
        }
    };
    Ok(Some(Arc::new(client::LlmClient::new(
        provider,
        settings.clone(),
        ledger,
    ))))
}
