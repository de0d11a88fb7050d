//! The durable queue between ingest and the workers: the `Queue` trait and its backends.

pub mod backoff;
pub mod embedded;
pub mod rabbit;

use async_trait::async_trait;
use serde::Serialize;

pub use embedded::EmbeddedQueue;
pub use rabbit::{RabbitQueue, Role};

/// A lead ready to be queued, with the keys that make its delivery idempotent.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Id given to this delivery (returned in the 202).
    pub event_id: String,
    /// Keys that identify the same delivery arriving again (idempotency key, body hash).
    pub dedup_keys: Vec<DedupKey>,
    /// The serialised `LeadEvent`.
    pub payload: Vec<u8>,
}

/// One way of recognising a repeated delivery.
#[derive(Debug, Clone)]
pub struct DedupKey {
    /// The key text (`idem:…` or `body:…`).
    pub key: String,
    /// How long the key is remembered; `None` is forever.
    pub ttl_ms: Option<i64>,
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Committed; the worker will see it.
    Queued { event_id: String },
    /// Seen before; nothing was queued. Carries the first delivery's event id.
    Duplicate { event_id: String },
}

/// A message handed to a worker under a lease.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Backend handle used to ack or retry (row id, delivery tag).
    pub handle: i64,
    /// The event id the message was queued with.
    pub event_id: String,
    /// The serialised `LeadEvent`, untrusted until parsed.
    pub payload: Vec<u8>,
    /// 1 on the first delivery.
    pub attempt: u32,
}

/// What `retry` did with a failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Retried {
    /// It comes back after this delay.
    Scheduled { delay_ms: u64 },
    /// It ran out of attempts and now waits in the dead-letter state.
    DeadLettered,
}

/// Counts for `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Deliveries accepted (each queued once).
    pub received: u64,
    /// Repeated deliveries answered as duplicates.
    pub duplicates: u64,
    /// Messages in the dead-letter state.
    pub dead_lettered: u64,
    /// Messages waiting or leased.
    pub depth: u64,
}

/// A dead-lettered message, as `nurture dlq list` would show it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// Backend handle.
    pub handle: i64,
    /// The event id it was queued with.
    pub event_id: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
}

/// The queue failed; ingest answers 503 and workers back off.
#[derive(Debug, thiserror::Error)]
#[error("queue unavailable: {0}")]
pub struct QueueError(pub String);

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError(e.to_string())
    }
}

/// A durable queue with leases, retries and a dead-letter state.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Commits a message unless one of its dedup keys was seen; returns only once durable.
    async fn enqueue(&self, message: NewMessage) -> Result<Enqueued, QueueError>;

    /// Leases the next ready message, if any.
    async fn lease(&self) -> Result<Option<Delivery>, QueueError>;

    /// Waits until work may be ready (woken by an enqueue, or after `max_wait`).
    async fn wait_for_work(&self, max_wait: std::time::Duration);

    /// Removes a message whose effects are committed.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// Schedules another attempt with backoff, or dead-letters after the last attempt.
    /// `at_least` raises the delay (a rate-limited provider said when to come back); the
    /// RabbitMQ queue caps it at its longest backoff step.
    async fn retry(
        &self,
        delivery: &Delivery,
        reason: &str,
        at_least: Option<std::time::Duration>,
    ) -> Result<Retried, QueueError>;

    /// Moves a message that can never succeed straight to the dead-letter state.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError>;

    /// Puts dead-lettered messages back in the queue with a fresh attempt count; `None`
    /// replays all. Returns how many.
    async fn replay_dead(&self, event_id: Option<&str>) -> Result<u64, QueueError>;

    /// Lists dead-lettered messages, oldest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, QueueError>;

    /// Counts for the read side.
    async fn stats(&self) -> Result<QueueStats, QueueError>;
}

/// What claiming a delivery's keys found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to publish, under this event id (a new one, or the one of a publisher that died
    /// before recording its confirm).
    Claimed { event_id: String },
    /// Queued before under this event id.
    Duplicate { event_id: String },
    /// Another request is publishing the same delivery right now.
    InFlight,
}

/// Where a broker-backed intake remembers delivery keys and counts (the CRM database), so
/// that every ingest process sees the same duplicates.
#[async_trait]
pub trait DeliveryLog: Send + Sync {
    /// Claims `keys` for `event_id` unless a live key says duplicate or in flight. A pending
    /// claim older than `stale_after_ms` is taken over.
    async fn claim(
        &self,
        keys: &[DedupKey],
        event_id: &str,
        stale_after_ms: i64,
    ) -> Result<Claim, QueueError>;

    /// Marks the claim queued (the broker confirmed) and counts the delivery as received.
    async fn confirm(&self, keys: &[DedupKey], event_id: &str) -> Result<(), QueueError>;

    /// Frees a claim whose publish the broker certainly refused, so the sender's retry takes
    /// it over at once under the same event id (never a new one: an earlier, uncertain
    /// publish of the same delivery may have landed).
    async fn release(&self, keys: &[DedupKey], event_id: &str) -> Result<(), QueueError>;

    /// Counts a repeated delivery.
    async fn count_duplicate(&self) -> Result<(), QueueError>;

    /// Deliveries received and duplicates answered.
    async fn intake_counts(&self) -> Result<(u64, u64), QueueError>;
}
