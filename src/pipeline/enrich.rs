//! Enrich: find the person in the CRM by normalised email, record this delivery, and load
//! what is known (returning or new, earlier messages, last track).

use tracing::debug;

use crate::lead::LeadEvent;
use crate::pipeline::StageError;
use crate::store::{Enriched, Store};

/// Upserts the lead and returns its history. Idempotent on the event id.
pub async fn enrich(store: &dyn Store, event: &LeadEvent) -> Result<Enriched, StageError> {
    let enriched = store.enrich(event).await?;
    debug!(
        lead_id = enriched.lead_id,
        returning = enriched.is_returning,
        prior = enriched.prior_interactions,
        "LeadEnriched"
    );
    Ok(enriched)
}
