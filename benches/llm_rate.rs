//! The LLM path under a rate limit, against a local fake OpenAI server of fixed latency.
//!
//! `cargo bench --bench llm_rate` (about three minutes; `NURTURE_BENCH_SECONDS` shortens the
//! first part). Two measurements, each with its baseline from the same run:
//!
//! 1. Limiter accuracy: many callers share one `LlmClient` limited to R requests/min, each
//!    call taking 2 s at the fake; the requests/min the fake sees, against R.
//! 2. End-to-end latency per lead at a steady arrival rate (one lead a second, the embedded
//!    server, the LLM scoring and writing, so two 2-s calls per lead), against the same
//!    arrivals on the built-in scorer.

#[path = "../tests/common/fake_llm.rs"]
#[allow(dead_code)]
mod fake_llm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_llm::{FakeLlm, FakeReply, Recorded};
use nurture::ai::client::{LlmClient, NoLedger, Purpose};
use nurture::ai::openai::{ApiKeyHeader, OpenAiProvider};
use nurture::ai::provider::{ChatMessage, ChatRequest, Role};
use nurture::config::{LlmProviderKind, LlmSettings, Price, ScoreMode, Settings};
use nurture::server::start;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LATENCY: Duration = Duration::from_secs(2);

fn fake() -> FakeLlm {
    FakeLlm::start(Arc::new(|r: &Recorded| {
        let answer = if r.schema_name().as_deref() == Some("lead_score") {
            json!({ "score": 50, "reasoning": ["bench"], "suggested_tone": "plain",
                    "confidence": 0.9, "signals": [] })
        } else {
            json!({ "subject": "A note", "body": "Hello,\n\nA short note for you.\n\nBest regards,\nThe Example team", "sms": "" })
        };
        FakeReply::answer(answer.to_string())
            .tokens(600, 150)
            .delay(LATENCY)
    }))
}

/// Requests/min seen by the fake while 64 callers keep the client busy for `seconds`.
async fn limiter_accuracy(rpm: u32, seconds: u64) -> f64 {
    let fake = fake();
    let provider =
        OpenAiProvider::new(&fake.base_url_openai(), None, ApiKeyHeader::Authorization).unwrap();
    let settings = LlmSettings {
        requests_per_minute: rpm,
        tokens_per_minute: 10_000_000,
        max_concurrency: 32,
        daily_budget_usd: 0.0,
        ..LlmSettings::default()
    };
    let client = Arc::new(LlmClient::new(
        Arc::new(provider),
        settings,
        Arc::new(NoLedger),
    ));
    let stop = CancellationToken::new();
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let request = ChatRequest {
                    model: "bench".into(),
                    system: "s".into(),
                    messages: vec![ChatMessage {
                        role: Role::User,
                        content: "u".into(),
                    }],
                    schema: None,
                    max_tokens: 100,
                    temperature: 0.0,
                };
                while !stop.is_cancelled() {
                    let mut calls = Vec::new();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = client.call(Purpose::Score, "bench", &request, &mut calls) => {}
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.cancel();
    for caller in callers {
        let _ = caller.await;
    }
    // Arrivals in the measured window, the first one excluded (it opens the window).
    let arrivals = fake.requests();
    let first = arrivals.first().map(|r| r.at).unwrap();
    let last = arrivals.last().map(|r| r.at).unwrap();
    let minutes = last.duration_since(first).as_secs_f64() / 60.0;
    (arrivals.len() - 1) as f64 / minutes
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    processed: u64,
}

/// Posts `leads` leads at one a second to an embedded server and reads its latency stats.
async fn end_to_end(leads: usize, llm: Option<(&FakeLlm, u32)>) -> Latency {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    if let Some((fake, rpm)) = llm {
        settings.llm.provider = LlmProviderKind::Openai;
        settings.llm.base_url = Some(fake.base_url_openai());
        settings.llm.api_key_env = Some(String::new());
        settings.llm.model = "bench".into();
        settings.llm.prices.insert(
            "bench".into(),
            Price {
                input: 0.15,
                output: 0.6,
            },
        );
        settings.llm.requests_per_minute = rpm;
        // Requests are what is measured here, not tokens: a lead's two calls are estimated
        // at ~3,000 tokens, so the default 100,000 tokens/min would cap it at 33 leads/min.
        settings.llm.tokens_per_minute = 10_000_000;
        settings.llm.max_concurrency = 16;
        settings.worker.concurrency = 16;
        settings.score.mode = ScoreMode::Llm;
        settings.score.max_gap = 99;
    }
    let running = start(settings, CancellationToken::new()).await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhook/lead-in", running.addr);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    for i in 0..leads {
        ticker.tick().await;
        let body = json!({
            "email": format!("bench-{i}@example.com"), "name": "Bench Lead",
            "company": "Bench Co", "job_title": "Head of Growth", "source": "google",
            "consent": true, "answers": { "company_size": "51-200", "message": "Need a demo" }
        });
        let status = client.post(&url).json(&body).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stats = nurture::api::collect_stats(&running.state).await.unwrap();
        if stats.processed as usize >= leads || Instant::now() > deadline {
            let _ = running.stop().await;
            return Latency {
                p50_ms: stats.e2e_latency_ms.p50,
                p99_ms: stats.e2e_latency_ms.p99,
                processed: stats.processed,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("NURTURE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    println!("LLM rate limit and latency, fake OpenAI server answering in {LATENCY:?}\n");

    // NURTURE_BENCH_PART=latency skips the limiter part.
    if std::env::var("NURTURE_BENCH_PART").as_deref() != Ok("latency") {
        println!("| limit R (req/min) | achieved req/min | achieved / R |");
        println!("|---|---|---|");
        for rpm in [60, 300] {
            let achieved = limiter_accuracy(rpm, seconds).await;
            println!(
                "| {rpm} | {achieved:.1} | {:.3} |",
                achieved / f64::from(rpm)
            );
        }
    }

    let leads = 45;
    println!(
        "\n{leads} leads at 1 lead/s on the embedded server (scoring + writing = 2 LLM calls a lead)\n"
    );
    println!("| scorer | processed | p50 ms | p99 ms | p50 vs built-in |");
    println!("|---|---|---|---|---|");
    let baseline = end_to_end(leads, None).await;
    println!(
        "| built-in (baseline) | {} | {:.0} | {:.0} | 1.0 |",
        baseline.processed, baseline.p50_ms, baseline.p99_ms
    );
    let fake = fake();
    // Demand is 120 calls/min: 300 leaves room, 150 is near the limit, 100 is below it
    // (the queue grows).
    for rpm in [300, 150, 100] {
        let llm = end_to_end(leads, Some((&fake, rpm))).await;
        println!(
            "| LLM, R = {rpm}/min | {} | {:.0} | {:.0} | {:.0}× |",
            llm.processed,
            llm.p50_ms,
            llm.p99_ms,
            llm.p50_ms / baseline.p50_ms.max(1.0)
        );
    }
}
