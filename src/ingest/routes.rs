//! `POST /webhook/lead-in`: answers 202 only once the lead is committed to the queue,
//! 200 for a repeated delivery, and a 4xx naming the field for bad input.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::api::ApiError;
use crate::ingest::{PayloadError, parse_body};
use crate::lead::LeadEvent;
use crate::queue::embedded::now_ms;
use crate::queue::{DedupKey, Enqueued, NewMessage};
use crate::server::AppState;
use crate::telemetry;

/// Name of the native source, part of the body-hash dedup key.
const SOURCE: &str = "lead-in";

/// Intake routes, with the body limit from settings.
pub fn routes(max_body_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/webhook/lead-in", post(lead_in))
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

async fn lead_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = accept(&state, &headers, body).await;
    if let Err(e) = &result {
        telemetry::lead_rejected(e.code());
    }
    result
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_content_type(headers)?;
    let limit = state.settings.ingest.max_body_bytes;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::malformed(r.body_text())
        }
    })?;
    let parsed = parse_body(&body, state.settings.ingest.max_answer_chars).map_err(to_api_error)?;

    let event = LeadEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        received_at_ms: now_ms(),
        lead: parsed.lead,
    };
    let message = NewMessage {
        event_id: event.event_id.clone(),
        dedup_keys: dedup_keys(
            parsed.idempotency_key.as_deref(),
            &body,
            state.settings.ingest.duplicate_window_hours,
        ),
        payload: serde_json::to_vec(&event).map_err(|e| ApiError::unavailable(&e))?,
    };
    // A slow queue (a locked file, a broker that does not confirm) becomes a 503 the sender
    // retries. If the commit lands after the timeout, the retry is answered as a duplicate.
    let timeout = std::time::Duration::from_secs(state.settings.ingest.enqueue_timeout_seconds);
    let enqueued = tokio::time::timeout(timeout, state.queue.enqueue(message))
        .await
        .map_err(|_| ApiError::unavailable(&format!("queue did not commit within {timeout:?}")))?;
    match enqueued.map_err(|e| ApiError::unavailable(&e))? {
        Enqueued::Queued { event_id } => {
            telemetry::lead_received();
            info!(%event_id, "LeadAccepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "status": "queued", "event_id": event_id })),
            ))
        }
        Enqueued::Duplicate { event_id } => {
            telemetry::lead_duplicate();
            debug!(%event_id, "LeadDuplicateIgnored");
            Ok((
                StatusCode::OK,
                Json(json!({ "status": "duplicate", "event_id": event_id })),
            ))
        }
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .unwrap_or("(none)");
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(value))
    }
}

fn to_api_error(e: PayloadError) -> ApiError {
    let message = e.to_string();
    match e {
        PayloadError::Malformed(_) => ApiError::malformed(message),
        PayloadError::Missing { field } => ApiError::missing_field(&field, message),
        PayloadError::Invalid { field, .. } => ApiError::invalid_field(&field, message),
    }
}

/// The sender's idempotency key (remembered for good) and the body hash (remembered for the
/// duplicate window), so a retried delivery is recognised either way.
fn dedup_keys(idempotency_key: Option<&str>, body: &[u8], window_hours: u32) -> Vec<DedupKey> {
    let digest = hex::encode(Sha256::digest(body));
    let mut keys = vec![DedupKey {
        key: format!("body:{SOURCE}:{digest}"),
        ttl_ms: Some(i64::from(window_hours) * 3_600_000),
    }];
    if let Some(key) = idempotency_key {
        keys.insert(
            0,
            DedupKey {
                key: format!("idem:{SOURCE}:{key}"),
                ttl_ms: None,
            },
        );
    }
    keys
}
