//! Logs and metrics. Logs go to stderr through `tracing` and carry lead and event ids, never
//! contact data or message text. Metrics are exposed in Prometheus text format at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::pipeline::Handled;

/// Sends logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("nurture_e2e_latency_seconds".into()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            )
            .expect("bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("nurture_llm_call_seconds".into()),
                &[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0],
            )
            .expect("bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full("nurture_dead_letter_attempts".into()),
                &[1.0, 2.0, 3.0, 5.0, 8.0, 13.0],
            )
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder was installed first (an embedding program's);
        // then ours still renders, just without the counters routed elsewhere.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts a webhook delivery that was queued.
pub fn lead_received() {
    metrics::counter!("nurture_leads_received_total").increment(1);
}

/// Counts a repeated delivery that was not queued.
pub fn lead_duplicate() {
    metrics::counter!("nurture_leads_duplicate_total").increment(1);
}

/// Counts a refused request by its error code.
pub fn lead_rejected(code: &'static str) {
    metrics::counter!("nurture_leads_rejected_total", "code" => code).increment(1);
}

/// Why a lead was dead-lettered, as a bounded metric label.
#[derive(Debug, Clone, Copy)]
pub enum DeadLetterCause {
    /// The queued message could not be parsed.
    Unparseable,
    /// A stage kept failing until the last attempt.
    RetriesExhausted,
    /// The worker holding it died or hung on every attempt.
    LeaseExpired,
}

/// Counts a lead sent to the dead-letter state, by cause, with the attempts it took.
pub fn lead_dead_lettered(cause: DeadLetterCause, attempts: u32) {
    let cause = match cause {
        DeadLetterCause::Unparseable => "unparseable",
        DeadLetterCause::RetriesExhausted => "retries_exhausted",
        DeadLetterCause::LeaseExpired => "lease_expired",
    };
    metrics::counter!("nurture_leads_dead_lettered_total", "cause" => cause).increment(1);
    metrics::histogram!("nurture_dead_letter_attempts").record(f64::from(attempts));
}

/// Records a handled lead: counter by track and outcome, end-to-end latency, guard blocks.
/// A delivery already finished by an earlier attempt is not counted again.
pub fn lead_handled(handled: &Handled) {
    if !handled.is_first_finish {
        return;
    }
    let labels = [
        ("track", handled.track.as_str()),
        ("outcome", handled.outcome.as_str()),
    ];
    metrics::counter!("nurture_leads_processed_total", &labels).increment(1);
    metrics::histogram!("nurture_e2e_latency_seconds").record(handled.latency_ms as f64 / 1000.0);
    for rule in &handled.blocked_by {
        metrics::counter!("nurture_guard_blocks_total", "rule" => *rule).increment(1);
    }
}

/// Counts one LLM call by provider, model, purpose and status, with its duration, tokens and
/// cost. Labels are bounded: models come from the configuration, statuses from a fixed list.
pub fn llm_call(call: &crate::ai::client::LlmCall, provider: &'static str) {
    let labels = [
        ("provider", provider.to_owned()),
        ("model", call.model.clone()),
        ("purpose", call.purpose.to_owned()),
        ("status", call.status.clone()),
    ];
    metrics::counter!("nurture_llm_requests_total", &labels).increment(1);
    metrics::histogram!("nurture_llm_call_seconds", "purpose" => call.purpose)
        .record(call.latency_ms as f64 / 1000.0);
    let model = call.model.clone();
    metrics::counter!("nurture_llm_tokens_total", "model" => model.clone(), "direction" => "input")
        .increment(call.input_tokens);
    metrics::counter!("nurture_llm_tokens_total", "model" => model.clone(), "direction" => "output")
        .increment(call.output_tokens);
    metrics::gauge!("nurture_llm_spent_usd", "model" => model).increment(call.cost_usd);
}

/// Raises an alert counter that needs a human: `quota`, `unauthorized`, `budget` or
/// `circuit_open`. Alert on any increase.
pub fn llm_alert(kind: &'static str) {
    metrics::counter!("nurture_llm_alerts_total", "kind" => kind).increment(1);
}

/// Counts a stage that used the built-in scorer or the template instead of the LLM.
pub fn llm_fallback(purpose: &'static str, reason: &'static str) {
    metrics::counter!("nurture_llm_fallbacks_total", "purpose" => purpose, "reason" => reason)
        .increment(1);
}
