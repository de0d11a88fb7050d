//! Sequences the stages for one delivery. Each stage's decision is stored; the order of
//! writes (decision with idempotency keys, then delivery, then the processed mark) is what
//! makes a redelivered lead harmless.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tracing::{info, instrument};

use crate::ai::Scorer;
use crate::channels::{ChannelError, Deliverer};
use crate::config::Settings;
use crate::lead::LeadEvent;
use crate::pipeline::compose::ComposeInput;
use crate::pipeline::{Composer, Guard, Handler, Outcome, Track, act, enrich, route, score};
use crate::queue::embedded::now_ms;
use crate::store::{Decision, Processed, Store, StoreError};

/// How a stage failed, which decides what the worker does with the delivery.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Try again later with backoff (store or channel unavailable).
    #[error("{0}")]
    Retry(String),
    /// Can never succeed (unparseable message): dead-letter it now.
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        StageError::Retry(e.to_string())
    }
}

impl From<ChannelError> for StageError {
    fn from(e: ChannelError) -> Self {
        StageError::Retry(e.to_string())
    }
}

/// What handling one delivery produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The lead.
    pub lead_id: i64,
    /// Its track.
    pub track: Track,
    /// What happened.
    pub outcome: Outcome,
    /// Names of the guard rules that blocked drafts.
    pub blocked_by: Vec<&'static str>,
    /// From acceptance to the end of the act stage.
    pub latency_ms: i64,
    /// `false` when an earlier attempt had already finished this delivery.
    pub is_first_finish: bool,
}

/// The stages and what they need.
pub struct Pipeline {
    /// The CRM.
    pub store: Arc<dyn Store>,
    /// Scores leads.
    pub scorer: Arc<dyn Scorer>,
    /// Writes drafts.
    pub composer: Composer,
    /// Checks drafts.
    pub guard: Guard,
    /// Delivers messages.
    pub deliverer: Arc<dyn Deliverer>,
    /// Routing bands and the confidence threshold.
    pub settings: Settings,
}

impl Pipeline {
    /// Runs every stage for one queued lead.
    #[instrument(skip_all, fields(event_id = %event.event_id))]
    pub async fn handle_event(&self, event: &LeadEvent) -> Result<Handled, StageError> {
        let store = self.store.as_ref();
        // Two events of one person never run at once (in any process): they would race on
        // `is_returning` and history. Held until this function returns.
        let _lead_lock = store.lock_lead(&event.lead.email.normalized()).await?;
        let enriched = enrich::enrich(store, event).await?;
        let lead_id = enriched.lead_id;
        let card = score::score(self.scorer.as_ref(), store, lead_id, event).await?;
        let route = route::route(card.score, &self.settings.route);
        let plan = act::plan(&route, &event.lead);

        let input = ComposeInput {
            lead_id,
            lead: &event.lead,
            card: &card,
            track: route.track,
            is_returning: enriched.is_returning,
        };
        let (drafts, compose_error) = match self.composer.compose(&input, &plan.channels) {
            Ok(drafts) => (drafts, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let hits = self.guard.check(&drafts);
        let mut reasons =
            act::review_reasons(&hits, card.confidence, self.settings.act.min_confidence);
        if let Some(e) = &compose_error {
            reasons.push(format!("template_error: {e}"));
        }
        let outcome = match (plan.is_suppressed, reasons.is_empty()) {
            (true, _) => Outcome::Suppressed,
            (false, false) => Outcome::Review,
            (false, true) => Outcome::Sent,
        };
        if outcome != Outcome::Review {
            reasons.clear();
        }

        let decision = Decision {
            lead_id,
            event_id: event.event_id.clone(),
            track: route.track,
            outcome,
            messages: act::outgoing(&event.event_id, &drafts),
            review_reasons: reasons,
            log: vec![
                ("route", json!({ "track": route.track, "plan": plan })),
                (
                    "compose",
                    json!({ "templates": drafts.iter().map(|d| &d.template).collect::<Vec<_>>(),
                                    "error": compose_error.map(|e| e.to_string()) }),
                ),
                ("guard", act::guard_log(&hits)),
            ],
        };
        let stored = self.store.record_decision(&decision).await?;
        // On a redelivery the stored messages are the earlier attempt's; they, not this
        // attempt's recomputation, say whether the lead was held or is being sent.
        let outcome = match stored.first().map(|m| m.status.as_str()) {
            Some("review") => Outcome::Review,
            Some(_) => Outcome::Sent,
            None => outcome,
        };
        if outcome == Outcome::Sent {
            let name = display_name(event);
            for message in stored.iter().filter(|m| m.status == "pending") {
                self.deliverer.deliver(message, name.as_deref()).await?;
            }
        }

        let latency_ms = (now_ms() - event.received_at_ms).max(0);
        let processed = Processed {
            event_id: event.event_id.clone(),
            lead_id,
            track: route.track,
            outcome,
            latency_ms,
        };
        let is_first_finish = self.store.finish(&processed).await?;
        info!(
            lead_id,
            track = route.track.as_str(),
            outcome = outcome.as_str(),
            "LeadProcessed"
        );
        Ok(Handled {
            lead_id,
            track: route.track,
            outcome,
            blocked_by: hits.iter().map(|h| h.rule).collect(),
            latency_ms,
            is_first_finish,
        })
    }
}

fn display_name(event: &LeadEvent) -> Option<String> {
    let lead = &event.lead;
    let parts: Vec<&str> = [lead.first_name.as_deref(), lead.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[async_trait]
impl Handler for Pipeline {
    async fn handle(&self, payload: &[u8]) -> Result<Handled, StageError> {
        // The reason names the kind and place of the error, not serde's text: that quotes the
        // offending value, which could be an email address, into logs and dead letters.
        let event: LeadEvent = serde_json::from_slice(payload).map_err(|e| {
            let at = format!("line {} column {}", e.line(), e.column());
            StageError::Permanent(format!(
                "unparseable queue message: {:?} error at {at}",
                e.classify()
            ))
        })?;
        self.handle_event(&event).await
    }
}
