//! Score: reuse the card an earlier attempt stored (a redelivered lead is never re-scored
//! differently, nor paid for twice), else ask the scoring engine, store its LLM calls and
//! the card. A rate-limited provider hands the lead back for a delayed retry.

use tracing::debug;

use crate::ai::ScoreCard;
use crate::ai::scoring::{ComeBackLater, ScoreInput, ScoringEngine};
use crate::lead::LeadEvent;
use crate::pipeline::StageError;
use crate::store::{Enriched, Store};

/// Scores the lead of `event` and stores the result.
pub async fn score(
    engine: &ScoringEngine,
    store: &dyn Store,
    history: &Enriched,
    event: &LeadEvent,
    is_last_attempt: bool,
) -> Result<ScoreCard, StageError> {
    let lead_id = history.lead_id;
    if let Some(card) = store.score_of(&event.event_id).await? {
        return Ok(card);
    }
    let input = ScoreInput {
        lead: &event.lead,
        history,
        is_last_attempt,
    };
    let scored = match engine.score(input).await {
        Ok(scored) => scored,
        Err(ComeBackLater { wait, calls }) => {
            store
                .record_llm_calls(lead_id, &event.event_id, &calls)
                .await?;
            return Err(StageError::RetryAfter(
                format!("llm rate limited: back in {} ms", wait.as_millis()),
                wait,
            ));
        }
    };
    store
        .record_llm_calls(lead_id, &event.event_id, &scored.calls)
        .await?;
    let stored = store
        .record_score(lead_id, &event.event_id, &scored.card)
        .await?;
    debug!(
        lead_id,
        score = stored.score.value(),
        confidence = stored.confidence,
        "LeadScored"
    );
    Ok(stored)
}
