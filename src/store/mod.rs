//! The CRM store: the `Store` trait, the records it keeps, and its backends.

mod deliveries;
pub mod sql;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::ai::ScoreCard;
use crate::ai::client::LlmCall;
use crate::lead::LeadEvent;
use crate::pipeline::{Channel, Outcome, Track};

pub use sql::{Backend, SqlStore};

/// What the CRM already knew about a lead when this event arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enriched {
    /// The lead's row id.
    pub lead_id: i64,
    /// The person was seen before, through another delivery.
    pub is_returning: bool,
    /// Earlier deliveries of this person.
    pub prior_interactions: u32,
    /// Messages already sent to this person.
    pub prior_messages_sent: u32,
    /// Track of the person's previous handled delivery.
    pub last_track: Option<String>,
}

/// A message the act stage wants stored before anything is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// Unique per event and channel; stored before the send.
    pub idempotency_key: String,
    /// Where it goes.
    pub channel: Channel,
    /// Which template wrote it.
    pub template: String,
    /// Address, E.164 number or Slack channel.
    pub recipient: String,
    /// Email subject.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    /// Row id.
    pub id: i64,
    /// Unique per event and channel.
    pub idempotency_key: String,
    /// `email`, `sms` or `slack`.
    pub channel: String,
    /// Track that chose it.
    pub track: String,
    /// Template that wrote it.
    pub template: String,
    /// Address, number or Slack channel.
    pub recipient: String,
    /// Email subject.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
    /// `pending`, `sent` or `review`.
    pub status: String,
}

/// Everything decided for one event after scoring, written in one transaction.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The lead.
    pub lead_id: i64,
    /// The delivery.
    pub event_id: String,
    /// Chosen track.
    pub track: Track,
    /// What will happen.
    pub outcome: Outcome,
    /// Messages to store (`pending` when they will be sent, `review` when held).
    pub messages: Vec<OutgoingMessage>,
    /// Why the drafts are held; empty unless the outcome is review.
    pub review_reasons: Vec<String>,
    /// Stage name to its decision, for the event log.
    pub log: Vec<(&'static str, serde_json::Value)>,
}

/// A delivery fully handled.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The delivery.
    pub event_id: String,
    /// The lead.
    pub lead_id: i64,
    /// Chosen track.
    pub track: Track,
    /// What happened.
    pub outcome: Outcome,
    /// From acceptance at ingest to the end of the act stage.
    pub latency_ms: i64,
}

/// Counts for `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreStats {
    /// Deliveries fully handled.
    pub processed: u64,
    /// Handled deliveries per track.
    pub by_track: BTreeMap<String, u64>,
    /// Handled deliveries per outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// Median end-to-end latency.
    pub latency_p50_ms: f64,
    /// 99th percentile end-to-end latency.
    pub latency_p99_ms: f64,
    /// Review tasks per reason code (the part of the reason before ':').
    pub review_reasons: BTreeMap<String, u64>,
    /// LLM calls, tokens and cost.
    pub llm: LlmStats,
}

/// LLM usage for `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LlmStats {
    /// Calls made (failed ones included).
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// USD, from the configured prices.
    pub cost_usd: f64,
    /// USD since the start of the UTC day (what the daily budget counts).
    pub cost_today_usd: f64,
    /// Leads with at least one call.
    pub leads: u64,
    /// Mean cost of a lead that used the LLM.
    pub cost_per_lead_usd: f64,
    /// The same, per model.
    pub by_model: BTreeMap<String, ModelUsage>,
    /// Calls per status (`ok`, `invalid_answer`, `timeout`, `rate_limited` …).
    pub by_status: BTreeMap<String, u64>,
}

/// One model's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ModelUsage {
    /// Calls made.
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// USD.
    pub cost_usd: f64,
}

/// Where one delivery stands, for `GET /api/events/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventStatus {
    /// The delivery.
    pub event_id: String,
    /// The lead, once enriched.
    pub lead_id: i64,
    /// Track, once handled.
    pub track: Option<String>,
    /// Outcome, once handled.
    pub outcome: Option<String>,
}

/// A lead with everything the CRM holds on it, for `GET /api/leads/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadView {
    /// Row id.
    pub id: i64,
    /// The address as typed.
    pub email: String,
    /// The latest profile received.
    pub profile: serde_json::Value,
    /// Deliveries received.
    pub interactions: Vec<serde_json::Value>,
    /// Scores, oldest first.
    pub scores: Vec<serde_json::Value>,
    /// Messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// LLM calls made for this lead, with tokens and cost.
    pub llm_calls: Vec<serde_json::Value>,
    /// Review tasks, oldest first.
    pub review_tasks: Vec<serde_json::Value>,
    /// The event log.
    pub events: Vec<serde_json::Value>,
}

/// Held while one event of a lead is processed; dropping it lets the next event of the same
/// lead in (see `Store::lock_lead`).
pub struct LeadLock {
    _guard: Box<dyn Send>,
}

impl LeadLock {
    /// Wraps whatever keeps the lock held.
    pub fn new(guard: impl Send + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

/// The store failed; the worker retries the delivery later.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// The CRM. Every write is idempotent on the event id, so a redelivered lead changes nothing.
#[async_trait]
pub trait Store: Send + Sync {
    /// Waits until no other worker, in any process sharing the store, holds this lead, and
    /// holds it until the returned guard is dropped: two events of one lead are never
    /// processed at once. `identity` is the normalised email.
    async fn lock_lead(&self, identity: &str) -> Result<LeadLock, StoreError>;

    /// Upserts the lead, records the interaction and returns what was known before it.
    async fn enrich(&self, event: &LeadEvent) -> Result<Enriched, StoreError>;

    /// Stores the score of this event, or returns the one stored by an earlier attempt.
    async fn record_score(
        &self,
        lead_id: i64,
        event_id: &str,
        card: &ScoreCard,
    ) -> Result<ScoreCard, StoreError>;

    /// The score stored for this event by an earlier attempt, if any.
    async fn score_of(&self, event_id: &str) -> Result<Option<ScoreCard>, StoreError>;

    /// Records LLM calls made for an event (scoring, writing, judging).
    async fn record_llm_calls(
        &self,
        lead_id: i64,
        event_id: &str,
        calls: &[LlmCall],
    ) -> Result<(), StoreError>;

    /// USD spent on LLM calls recorded since `since_ms`.
    async fn llm_spent_since(&self, since_ms: i64) -> Result<f64, StoreError>;

    /// Ids of other leads whose normalised email is one of `emails`.
    async fn leads_with_emails(
        &self,
        emails: &[String],
        except_lead: i64,
    ) -> Result<Vec<i64>, StoreError>;

    /// Stores messages, review task and log of a decision; returns the event's stored
    /// messages (an earlier attempt's, if there was one).
    async fn record_decision(&self, decision: &Decision) -> Result<Vec<StoredMessage>, StoreError>;

    /// Records the end of an event's handling, marking its messages sent when the outcome is
    /// `sent` (they were delivered just before); `false` if an earlier attempt already did.
    async fn finish(&self, processed: &Processed) -> Result<bool, StoreError>;

    /// Counts for the read side.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Where one delivery stands.
    async fn event_status(&self, event_id: &str) -> Result<Option<EventStatus>, StoreError>;

    /// A lead with its history.
    async fn lead_view(&self, lead_id: i64) -> Result<Option<LeadView>, StoreError>;
}
