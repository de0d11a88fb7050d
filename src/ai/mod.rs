//! Scorers behind one trait. The built-in points model is the offline default; LLM providers
//! and a trained statistical model plug in behind the same `Scorer`.

pub mod anthropic;
pub mod answer;
pub mod http;
pub mod openai;
pub mod points;
pub mod provider;

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
