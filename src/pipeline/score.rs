//! Score: ask the configured scorer, store the card, and reuse a stored card on redelivery
//! so that a retried lead is never re-scored differently.

use tracing::debug;

use crate::ai::{ScoreCard, Scorer};
use crate::lead::LeadEvent;
use crate::pipeline::StageError;
use crate::store::Store;

/// Scores the lead of `event` and stores the result.
pub async fn score(
    scorer: &dyn Scorer,
    store: &dyn Store,
    lead_id: i64,
    event: &LeadEvent,
) -> Result<ScoreCard, StageError> {
    let card = scorer
        .score(&event.lead)
        .await
        .map_err(|e| StageError::Retry(e.to_string()))?;
    let stored = store.record_score(lead_id, &event.event_id, &card).await?;
    debug!(
        lead_id,
        score = stored.score.value(),
        confidence = stored.confidence,
        "LeadScored"
    );
    Ok(stored)
}
