//! The worker loop: lease a lead, run the handler, then ack, retry with backoff, or
//! dead-letter. The ack comes only after the handler's effects are committed, so a crash
//! anywhere before it means a redelivery, never a loss.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::WorkerSettings;
use crate::pipeline::{Handled, StageError};
use crate::queue::{Delivery, Queue, Retried};
use crate::telemetry::{self, DeadLetterCause};

/// Handles one queued payload. The pipeline implements it; tests swap in failing stages.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Processes the payload; the error kind decides retry or dead letter. `attempt` is 1 on
    /// the first delivery; `is_last` says no retry will follow, so a stage must not ask for
    /// one (a rate-limited LLM falls back instead).
    async fn handle(
        &self,
        payload: &[u8],
        attempt: u32,
        is_last: bool,
    ) -> Result<Handled, StageError>;
}

/// Starts `settings.concurrency` workers that run until `shutdown` fires; each finishes the
/// lead it holds before stopping. Await the returned set to wait for them.
pub fn run_workers(
    queue: Arc<dyn Queue>,
    handler: Arc<dyn Handler>,
    settings: &WorkerSettings,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let poll = Duration::from_millis(settings.poll_interval_ms);
    let max_attempts = settings.max_attempts;
    for _ in 0..settings.concurrency {
        let (queue, handler, shutdown) = (queue.clone(), handler.clone(), shutdown.clone());
        set.spawn(async move { work(queue, handler, poll, max_attempts, shutdown).await });
    }
    set
}

async fn work(
    queue: Arc<dyn Queue>,
    handler: Arc<dyn Handler>,
    poll: Duration,
    max_attempts: u32,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match queue.lease().await {
            Ok(Some(delivery)) => {
                failures = 0;
                process(queue.as_ref(), handler.as_ref(), delivery, max_attempts).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = queue.wait_for_work(poll) => {}
                }
            }
            Err(e) => {
                failures += 1;
                let delay = crate::queue::backoff::delay_ms(failures, 100, 5_000);
                warn!(error = %e, delay_ms = delay, "QueueLeaseFailed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                }
            }
        }
    }
}

async fn process(queue: &dyn Queue, handler: &dyn Handler, delivery: Delivery, max_attempts: u32) {
    let event_id = delivery.event_id.as_str();
    let is_last = delivery.attempt >= max_attempts;
    let outcome = AssertUnwindSafe(handler.handle(&delivery.payload, delivery.attempt, is_last))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(StageError::Retry("handler panicked".into())));
    let result = match outcome {
        Ok(handled) => {
            telemetry::lead_handled(&handled);
            queue.ack(&delivery).await
        }
        Err(StageError::Retry(reason)) => retry(queue, &delivery, &reason, None).await,
        Err(StageError::RetryAfter(reason, wait)) => {
            retry(queue, &delivery, &reason, Some(wait)).await
        }
        Err(StageError::Permanent(reason)) => {
            error!(event_id, %reason, "LeadDeadLettered");
            telemetry::lead_dead_lettered(DeadLetterCause::Unparseable, delivery.attempt);
            queue.dead_letter(&delivery, &reason).await
        }
    };
    // The lease runs out and the lead comes back: a failed ack costs a redelivery, not a loss.
    if let Err(e) = result {
        warn!(event_id, error = %e, "QueueUpdateFailed");
    }
}

async fn retry(
    queue: &dyn Queue,
    delivery: &Delivery,
    reason: &str,
    at_least: Option<Duration>,
) -> Result<(), crate::queue::QueueError> {
    let event_id = delivery.event_id.as_str();
    match queue.retry(delivery, reason, at_least).await {
        Ok(Retried::Scheduled { delay_ms }) => {
            warn!(event_id, attempt = delivery.attempt, delay_ms, %reason, "LeadRetryScheduled");
            Ok(())
        }
        Ok(Retried::DeadLettered) => {
            error!(event_id, attempt = delivery.attempt, %reason, "LeadDeadLettered");
            telemetry::lead_dead_lettered(DeadLetterCause::RetriesExhausted, delivery.attempt);
            Ok(())
        }
        Err(e) => Err(e),
    }
}
