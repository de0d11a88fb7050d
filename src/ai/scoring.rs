//! The score stage's brain: the built-in points model always, the LLM when configured, and
//! how the two combine (`score.mode`). Every path ends in a score card: a failed, refused or
//! malformed LLM answer falls back to the built-in score with a lowered confidence, so the
//! drafts wait for a human; a rate limit hands the lead back to the queue's delayed retry
//! unless this is its last attempt.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::warn;

use crate::ai::ScoreCard;
use crate::ai::answer::{ScoreAnswer, parse_score_answer};
use crate::ai::client::{CallError, LlmCall, LlmClient, Purpose};
use crate::ai::injection;
use crate::ai::points::PointsScorer;
use crate::ai::prompts::{Prompts, lead_json};
use crate::ai::provider::{ChatMessage, ChatRequest, OutputSchema, Role};
use crate::config::{ScoreMode, Settings};
use crate::lead::{Lead, Score};
use crate::pipeline::compose::is_invisible;
use crate::store::Enriched;
use crate::telemetry;

/// Longest raw answer kept with a score.
const MAX_RAW_ANSWER: usize = 8_000;

/// The score, and every LLM call it took (for the store's cost records).
#[derive(Debug, Clone)]
pub struct Scored {
    /// The card to store.
    pub card: ScoreCard,
    /// Calls made, failed ones included.
    pub calls: Vec<LlmCall>,
}

/// The provider asked us to come back later and this is not the lead's last attempt.
#[derive(Debug, Clone)]
pub struct ComeBackLater {
    /// How long the provider asked us to wait.
    pub wait: Duration,
    /// Calls made before giving the lead back.
    pub calls: Vec<LlmCall>,
}

/// What the engine needs about the lead besides the lead.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInput<'a> {
    /// The lead.
    pub lead: &'a Lead,
    /// What the CRM knew.
    pub history: &'a Enriched,
    /// No retry follows this attempt: never ask for one.
    pub is_last_attempt: bool,
}

/// Scores leads per `score.mode`.
pub struct ScoringEngine {
    mode: ScoreMode,
    builtin: PointsScorer,
    llm: Option<Arc<LlmClient>>,
    prompts: Arc<Prompts>,
    settings: Settings,
}

impl ScoringEngine {
    /// The engine for `settings`; `llm` is the shared client when a provider is configured.
    pub fn new(settings: &Settings, llm: Option<Arc<LlmClient>>, prompts: Arc<Prompts>) -> Self {
        Self {
            mode: if llm.is_some() {
                settings.score.mode
            } else {
                ScoreMode::Builtin
            },
            builtin: PointsScorer::new(settings.score.clone(), settings.route.clone()),
            llm,
            prompts,
            settings: settings.clone(),
        }
    }

    /// Scores one lead.
    pub async fn score(&self, input: ScoreInput<'_>) -> Result<Scored, ComeBackLater> {
        let builtin = self.builtin.score_now(input.lead);
        // Lead text only matters when a model reads it (to score or to write).
        let suspicions = if self.llm.is_some() {
            injection::scan(input.lead)
        } else {
            Vec::new()
        };
        let review_flags: Vec<String> = suspicions.iter().map(|s| s.reason()).collect();
        let client = match (&self.llm, self.mode) {
            (Some(client), ScoreMode::Llm | ScoreMode::Blend) => client,
            _ => {
                let mut card = builtin.clone();
                card.parts = json!({ "mode": "builtin", "builtin": part(&builtin) });
                card.review_flags = review_flags;
                return Ok(Scored {
                    card,
                    calls: Vec::new(),
                });
            }
        };

        let mut calls = Vec::new();
        let asked = self.ask(client, input, &mut calls).await;
        let mut card = match asked {
            Ok((answer, raw, version)) => self.combine(&builtin, answer, client, raw, version),
            Err(Failure::Call(e)) => {
                if let Some(wait) = e.retry_after().filter(|_| !input.is_last_attempt) {
                    return Err(ComeBackLater { wait, calls });
                }
                self.fallback(&builtin, e.kind(), None)
            }
            Err(Failure::Invalid(raw)) => {
                // The refusal can quote the model's text, which can quote the lead: not logged.
                warn!("LlmScoreAnswerRefused");
                self.fallback(&builtin, "invalid_answer", Some(raw))
            }
            Err(Failure::Prompt(e)) => {
                warn!(error = %e, "LlmPromptFailed");
                self.fallback(&builtin, "prompt_error", None)
            }
        };
        if !review_flags.is_empty() {
            card.confidence = card.confidence.min(self.settings.score.fallback_confidence);
        }
        card.review_flags.extend(review_flags);
        // What this score cost, kept with it (each call is also in `llm_calls`).
        if let Value::Object(parts) = &mut card.parts {
            parts.insert(
                "usage".into(),
                json!({
                    "calls": calls.len(),
                    "input_tokens": calls.iter().map(|c| c.input_tokens).sum::<u64>(),
                    "output_tokens": calls.iter().map(|c| c.output_tokens).sum::<u64>(),
                    "cost_usd": calls.iter().map(|c| c.cost_usd).sum::<f64>(),
                }),
            );
        }
        Ok(Scored { card, calls })
    }

    /// Asks the model, and once more with the validation error if the answer is refused.
    async fn ask(
        &self,
        client: &LlmClient,
        input: ScoreInput<'_>,
        calls: &mut Vec<LlmCall>,
    ) -> Result<(ScoreAnswer, String, String), Failure> {
        let s = &self.settings;
        let h = input.history;
        let ctx = json!({
            "company_name": s.compose.company_name,
            "product_name": s.compose.product_name,
            "active_from": s.route.active_from,
            "hot_above": s.route.hot_above,
            "lead_json": lead_json(input.lead, s.llm.max_lead_text_chars, false),
            "returning": h.is_returning,
            "prior_interactions": h.prior_interactions,
            "prior_messages_sent": h.prior_messages_sent,
            "last_track": h.last_track,
        });
        let prompt = self
            .prompts
            .render("score", &ctx)
            .map_err(Failure::Prompt)?;
        let mut request = ChatRequest::structured(
            s.llm.model.clone(),
            prompt.system,
            prompt.user,
            OutputSchema {
                name: "lead_score".into(),
                schema: score_schema(),
            },
            s.llm.max_output_tokens,
            0.0,
        );
        let mut refused: Option<String> = None;
        for _ in 0..2 {
            let reply = client
                .call(Purpose::Score, &prompt.version, &request, calls)
                .await
                .map_err(Failure::Call)?;
            match parse_score_answer(&reply.text) {
                Ok(answer) => return Ok((answer, clip(&reply.text), prompt.version)),
                Err(e) => {
                    if let Some(call) = calls.last_mut() {
                        call.status = "invalid_answer".into();
                    }
                    request.messages.push(ChatMessage {
                        role: Role::Assistant,
                        content: clip(&reply.text),
                    });
                    request.messages.push(ChatMessage {
                        role: Role::User,
                        content: format!(
                            "Your answer was refused: {e}. Answer again with only the JSON object described in your instructions."
                        ),
                    });
                    refused = Some(clip(&reply.text));
                }
            }
        }
        Err(Failure::Invalid(refused.unwrap_or_default()))
    }

    fn combine(
        &self,
        builtin: &ScoreCard,
        answer: ScoreAnswer,
        client: &LlmClient,
        raw: String,
        version: String,
    ) -> ScoreCard {
        let s = &self.settings.score;
        let llm_weight = if self.mode == ScoreMode::Blend {
            s.llm_weight
        } else {
            1.0
        };
        let llm_score = i64::from(answer.score);
        let builtin_score = i64::from(builtin.score);
        let blended = llm_weight * llm_score as f64 + (1.0 - llm_weight) * builtin_score as f64;
        let mut confidence =
            llm_weight * answer.confidence + (1.0 - llm_weight) * builtin.confidence;
        let gap = (llm_score - builtin_score).abs();
        let mut notes = Vec::new();
        if gap > s.max_gap {
            confidence = confidence.min(s.fallback_confidence);
            notes.push(format!(
                "score_gap: the LLM said {llm_score}, the built-in model {builtin_score}, more than {} apart",
                s.max_gap
            ));
        }
        let mut review_flags = Vec::new();
        if answer
            .signals
            .iter()
            .any(|sig| sig.contains("instructions_in_lead_data"))
        {
            review_flags.push(
                "injection_suspected: the model reported instructions in the lead data".into(),
            );
            confidence = confidence.min(s.fallback_confidence);
        }
        let model = client.settings().model.clone();
        let parts = json!({
            "mode": self.mode.as_str(),
            "weights": { "llm": llm_weight, "builtin": 1.0 - llm_weight },
            "llm": { "score": llm_score, "confidence": answer.confidence,
                     "signals": answer.signals, "model": model },
            "builtin": part(builtin),
            "gap": gap,
            "max_gap": s.max_gap,
        });
        let reasoning = answer
            .reasoning
            .iter()
            .take(4)
            .map(|r| plain_text(r, 200))
            .collect();
        ScoreCard {
            score: Score::clamped(blended.round() as i64),
            reasoning,
            suggested_tone: plain_text(&answer.suggested_tone, 60),
            confidence: (confidence * 100.0).round() / 100.0,
            model,
            review_flags,
            notes,
            parts,
            prompt_version: Some(version),
            raw_answer: Some(raw),
        }
    }

    fn fallback(
        &self,
        builtin: &ScoreCard,
        reason: &'static str,
        raw: Option<String>,
    ) -> ScoreCard {
        telemetry::llm_fallback("score", reason);
        let mut card = builtin.clone();
        card.confidence = card.confidence.min(self.settings.score.fallback_confidence);
        card.notes.push(format!("llm_fallback: {reason}"));
        card.parts = json!({
            "mode": self.mode.as_str(),
            "fallback": reason,
            "builtin": part(builtin),
            "llm": Value::Null,
        });
        card.raw_answer = raw;
        card
    }
}

enum Failure {
    Call(CallError),
    /// Refused twice; the last raw answer.
    Invalid(String),
    Prompt(String),
}

fn part(card: &ScoreCard) -> Value {
    json!({ "score": i64::from(card.score), "confidence": card.confidence,
            "reasoning": card.reasoning })
}

/// The JSON Schema of a scoring answer. The score's bounds are also checked by the parser:
/// a server that ignores the schema cannot slip a 0 or a 0.85 through.
pub fn score_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "score": { "type": "integer", "minimum": 1, "maximum": 100 },
            "reasoning": { "type": "array", "items": { "type": "string" } },
            "suggested_tone": { "type": "string" },
            "confidence": { "type": "number", "minimum": 0, "maximum": 1 },
            "signals": { "type": "array", "items": { "type": "string" } }
        },
        "required": ["score", "reasoning", "suggested_tone", "confidence", "signals"],
        "additionalProperties": false
    })
}

/// Model text bound for a message or an alert: one line, no control or invisible characters,
/// at most `max` characters.
pub fn plain_text(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !is_invisible(*c))
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_RAW_ANSWER).collect()
}
