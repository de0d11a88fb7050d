//! The LLM client's limits on a paused tokio clock: minutes of traffic run in milliseconds,
//! and every call's instant is exact. The provider is an in-process fake behind the same
//! `LlmProvider` trait the HTTP clients implement (the HTTP clients themselves are tested
//! against a fake server in `llm_providers.rs` and `llm_pipeline.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nurture::ai::client::{CallError, LlmClient, NoLedger, Purpose};
use nurture::ai::provider::{
    ChatMessage, ChatReply, ChatRequest, LlmProvider, ProviderError, Role, Usage,
};
use nurture::config::LlmSettings;
use tokio::time::Instant;

/// Records when each call arrives; answers after `latency`, or fails while `failing`.
struct Clocked {
    arrivals: Mutex<Vec<Instant>>,
    latency: Duration,
    failing: Mutex<bool>,
}

impl Clocked {
    fn new(latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            arrivals: Mutex::new(Vec::new()),
            latency,
            failing: Mutex::new(false),
        })
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

#[async_trait]
impl LlmProvider for Clocked {
    fn name(&self) -> &'static str {
        "clocked"
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ProviderError> {
        self.arrivals.lock().unwrap().push(Instant::now());
        tokio::time::sleep(self.latency).await;
        if *self.failing.lock().unwrap() {
            return Err(ProviderError::Unavailable("503".into()));
        }
        Ok(ChatReply {
            text: "{}".into(),
            model: request.model.clone(),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 20,
            },
        })
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        system: "s".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: "u".into(),
        }],
        schema: None,
        max_tokens: 100,
        temperature: 0.0,
    }
}

fn settings(rpm: u32) -> LlmSettings {
    LlmSettings {
        requests_per_minute: rpm,
        tokens_per_minute: 10_000_000,
        max_concurrency: 8,
        timeout_seconds: 30,
        daily_budget_usd: 0.0,
        ..LlmSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn sixty_a_minute_is_never_exceeded_in_any_sixty_second_window() {
    let provider = Clocked::new(Duration::from_secs(2));
    let client = Arc::new(LlmClient::new(
        provider.clone(),
        settings(60),
        Arc::new(NoLedger),
    ));
    let start = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut calls = Vec::new();
                client
                    .call(Purpose::Score, "v", &request(), &mut calls)
                    .await
                    .map(|_| calls.len())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(1));
    }

    let arrivals = provider.arrivals();
    assert_eq!(arrivals.len(), 200);
    let window = Duration::from_secs(60);
    let busiest = arrivals
        .iter()
        .map(|from| {
            arrivals
                .iter()
                .filter(|t| **t >= *from && t.duration_since(*from) < window)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(busiest, 60, "a 60 s window saw {busiest} requests");
    // And the limit is used, not wasted: 200 requests at one a second take 199 s.
    let span = arrivals.iter().max().unwrap().duration_since(start);
    assert!(
        span >= Duration::from_secs(199) && span < Duration::from_secs(201),
        "{span:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_consecutive_failures_and_lets_one_through_after_the_cool_down() {
    let provider = Clocked::new(Duration::from_millis(10));
    *provider.failing.lock().unwrap() = true;
    let mut s = settings(6_000);
    s.breaker_failures = 3;
    s.breaker_cooldown_seconds = 60;
    let client = LlmClient::new(provider.clone(), s, Arc::new(NoLedger));
    let mut calls = Vec::new();
    for _ in 0..3 {
        let e = client
            .call(Purpose::Score, "v", &request(), &mut calls)
            .await;
        assert!(matches!(
            e,
            Err(CallError::Provider(ProviderError::Unavailable(_)))
        ));
    }
    let e = client
        .call(Purpose::Score, "v", &request(), &mut calls)
        .await;
    assert!(matches!(e, Err(CallError::CircuitOpen(_))), "{e:?}");
    assert_eq!(
        provider.arrivals().len(),
        3,
        "an open breaker let a call through"
    );

    tokio::time::advance(Duration::from_secs(61)).await;
    *provider.failing.lock().unwrap() = false;
    let ok = client
        .call(Purpose::Score, "v", &request(), &mut calls)
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(provider.arrivals().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_a_failure_with_its_own_status() {
    let provider = Clocked::new(Duration::from_secs(60));
    let mut s = settings(6_000);
    s.timeout_seconds = 5;
    let client = LlmClient::new(provider, s, Arc::new(NoLedger));
    let mut calls = Vec::new();
    let started = Instant::now();
    let e = client
        .call(Purpose::Write, "v", &request(), &mut calls)
        .await;
    assert_eq!(e, Err(CallError::Provider(ProviderError::Timeout)));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, "timeout");
    assert_eq!(calls[0].purpose, "write");
    assert_eq!(calls[0].input_tokens, 0);
}
