//! Read-side routes. Everything here reads; nothing changes state.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::ApiError;
use crate::queue::DeadLetter;
use crate::server::AppState;
use crate::store::{EventStatus, LeadView, LlmStats};

/// The body of `GET /api/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Deliveries accepted and queued.
    pub received: u64,
    /// Repeated deliveries not queued again.
    pub duplicates: u64,
    /// Deliveries fully handled.
    pub processed: u64,
    /// Deliveries in the dead-letter state.
    pub dead_lettered: u64,
    /// Deliveries waiting or in progress.
    pub queue_depth: u64,
    /// Handled deliveries per track.
    pub by_track: BTreeMap<String, u64>,
    /// Handled deliveries per outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// End-to-end latency from acceptance to action.
    pub e2e_latency_ms: Latency,
    /// Review tasks per reason code.
    pub review_reasons: BTreeMap<String, u64>,
    /// The oldest dead letters (up to 20) with their reasons and attempt counts; empty when
    /// there are none.
    pub dead_letters: Vec<DeadLetter>,
    /// LLM calls, tokens and cost (all zero with the built-in scorer).
    #[serde(default)]
    pub llm: LlmStats,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Routes of the read side.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/api/stats", get(stats))
        .route("/api/leads/{id}", get(lead))
        .route("/api/events/{event_id}", get(event))
        .route("/metrics", get(metrics))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Gathers queue and store counts into the stats body; every track and outcome is present.
pub async fn collect_stats(state: &AppState) -> Result<Stats, ApiError> {
    let queue = state
        .queue
        .stats()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let store = state
        .store
        .stats()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    // Listed only when there are some: on RabbitMQ, listing reads the dead-letter queue.
    let dead_letters = if queue.dead_lettered > 0 {
        state
            .queue
            .dead_letters(20)
            .await
            .map_err(|e| ApiError::unavailable(&e))?
    } else {
        Vec::new()
    };
    let filled = |mut map: BTreeMap<String, u64>, keys: &[&str]| {
        for key in keys {
            map.entry((*key).to_owned()).or_insert(0);
        }
        map
    };
    Ok(Stats {
        received: queue.received,
        duplicates: queue.duplicates,
        processed: store.processed,
        dead_lettered: queue.dead_lettered,
        queue_depth: queue.depth,
        by_track: filled(store.by_track, &["drip", "active", "hot"]),
        by_outcome: filled(store.by_outcome, &["sent", "review", "suppressed"]),
        e2e_latency_ms: Latency {
            p50: store.latency_p50_ms,
            p99: store.latency_p99_ms,
        },
        review_reasons: store.review_reasons,
        dead_letters,
        llm: store.llm,
    })
}

async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(collect_stats(&state).await?))
}

async fn lead(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LeadView>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("lead"))?;
    let view = state
        .store
        .lead_view(id)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    view.map(Json).ok_or_else(|| ApiError::not_found("lead"))
}

async fn event(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Json<EventStatus>, ApiError> {
    let status = state
        .store
        .event_status(&event_id)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    status
        .map(Json)
        .ok_or_else(|| ApiError::not_found("processed event"))
}

async fn metrics() -> impl IntoResponse {
    let body = crate::telemetry::prometheus().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
