//! Scoring and writing. The built-in points model (`points`) is the offline default and the
//! fallback; `scoring` combines it with an LLM per `score.mode`; `writer` rewrites and judges
//! drafts. LLM vendors sit behind `provider::LlmProvider` (`openai`, `anthropic`), and
//! `client` wraps one with rate limits (`limits`), a breaker, a budget and cost records.
//! `prompts` holds the prompt files, `answer` parses a scoring answer, `injection` flags lead
//! text that reads as instructions.

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
pub mod retry_after;
pub mod scoring;
pub mod writer;

use serde::{Deserialize, Serialize};

use crate::lead::Score;

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
