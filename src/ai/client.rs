//! One LLM call with everything around it: the circuit breaker, the daily budget, the rate
//! limits, the deadline, a short in-process wait on a 429, the cost, the metrics and a record
//! of the call for the store. Providers (`ai::openai`, `ai::anthropic`) only speak the wire.
//!
//! We keep our own thin clients rather than a vendor SDK (async-openai retries 429s itself
//! with its own backoff, and none of them hands back the rate-limit headers): the retry
//! policy is the product's — short waits in process, long ones on the queue's delayed path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;
use tracing::warn;

use crate::ai::limits::{Breaker, Limits};
use crate::ai::provider::{ChatReply, ChatRequest, LlmProvider, ProviderError};
use crate::config::{LlmProviderKind, LlmSettings};
use crate::queue::embedded::now_ms;
use crate::store::StoreError;
use crate::telemetry;

/// What a call was for: a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The propensity score.
    Score,
    /// The message.
    Write,
    /// The judge's verdict on a draft.
    Judge,
}

impl Purpose {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Score => "score",
            Purpose::Write => "write",
            Purpose::Judge => "judge",
        }
    }
}

/// One call as stored in `llm_calls`: what it cost and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmCall {
    /// `score`, `write` or `judge`.
    pub purpose: &'static str,
    /// The model asked.
    pub model: String,
    /// Name and hash of the prompt templates.
    pub prompt_version: String,
    /// `ok`, `invalid_answer`, or the failure kind (`rate_limited`, `timeout` …).
    pub status: String,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Answer tokens billed.
    pub output_tokens: u64,
    /// From the configured prices.
    pub cost_usd: f64,
    /// Time spent in the call, waiting for limits excluded.
    pub latency_ms: i64,
}

/// Why no answer came back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The vendor failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The vendor asked us to wait longer than `llm.max_wait_seconds`.
    #[error("rate limited for {0:?}")]
    Paused(Duration),
    /// Too many failures in a row: no calls until the cool-down ends.
    #[error("circuit open for {0:?}")]
    CircuitOpen(Duration),
    /// Today's budget is spent.
    #[error("daily budget spent")]
    BudgetSpent,
}

impl CallError {
    /// A short, bounded label (metrics, stored fallback reasons).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Provider(e) => e.kind(),
            CallError::Paused(_) => "rate_limited",
            CallError::CircuitOpen(_) => "circuit_open",
            CallError::BudgetSpent => "budget_spent",
        }
    }

    /// How long to wait before the same work may succeed, for rate limits only.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Paused(wait) => Some(*wait),
            CallError::Provider(ProviderError::RateLimited { retry_after }) => {
                Some(retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT))
            }
            _ => None,
        }
    }
}

/// The wait after a 429 that names none.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);

/// How many 429s one call waits out in process before handing the work back.
const MAX_RATE_LIMIT_WAITS: u32 = 2;

/// Where the day's spend so far is read from: the store, shared by all processes.
#[async_trait]
pub trait SpendLedger: Send + Sync {
    /// USD spent on LLM calls recorded since `since_ms` (Unix milliseconds).
    async fn spent_since(&self, since_ms: i64) -> Result<f64, StoreError>;
}

/// A ledger that knows nothing: for tests and tools without a store.
pub struct NoLedger;

#[async_trait]
impl SpendLedger for NoLedger {
    async fn spent_since(&self, _since_ms: i64) -> Result<f64, StoreError> {
        Ok(0.0)
    }
}

const DAY_MS: i64 = 86_400_000;
/// How often the day's spend is re-read from the store (other processes spend too).
const LEDGER_REFRESH: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Spend {
    day: i64,
    recorded: f64,
    local: f64,
    read_at: Option<Instant>,
}

/// The daily budget: the store's total for the UTC day, plus what this process spent since
/// it last read it.
struct Budget {
    limit_usd: f64,
    ledger: Arc<dyn SpendLedger>,
    spend: Mutex<Spend>,
}

impl Budget {
    async fn is_spent(&self) -> bool {
        if self.limit_usd <= 0.0 {
            return false;
        }
        let today = now_ms().div_euclid(DAY_MS);
        let stale = {
            let spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
            spend.day != today || spend.read_at.is_none_or(|t| t.elapsed() > LEDGER_REFRESH)
        };
        if stale {
            match self.ledger.spent_since(today * DAY_MS).await {
                Ok(recorded) => {
                    let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
                    *spend = Spend {
                        day: today,
                        recorded,
                        local: 0.0,
                        read_at: Some(Instant::now()),
                    };
                }
                // Keep counting locally; the budget is still enforced on what we know.
                Err(e) => warn!(error = %e, "LlmSpendUnreadable"),
            }
        }
        let spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        spend.recorded + spend.local >= self.limit_usd
    }

    fn add(&self, cost: f64) {
        self.spend.lock().unwrap_or_else(|e| e.into_inner()).local += cost;
    }
}

/// A provider with its limits, breaker and budget. One per process, shared by every worker.
pub struct LlmClient {
    provider: Arc<dyn LlmProvider>,
    limits: Limits,
    breaker: Breaker,
    budget: Budget,
    settings: LlmSettings,
}

impl LlmClient {
    /// Wraps `provider` with the limits of `settings`; the day's spend is read from `ledger`.
    pub fn new(
        provider: Arc<dyn LlmProvider>,
        settings: LlmSettings,
        ledger: Arc<dyn SpendLedger>,
    ) -> Self {
        Self {
            provider,
            limits: Limits::new(
                settings.requests_per_minute,
                settings.tokens_per_minute,
                settings.max_concurrency,
            ),
            breaker: Breaker::new(
                settings.breaker_failures,
                Duration::from_secs(settings.breaker_cooldown_seconds),
            ),
            budget: Budget {
                limit_usd: settings.daily_budget_usd,
                ledger,
                spend: Mutex::new(Spend::default()),
            },
            settings,
        }
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// Sends `request`, waiting out limits and short 429 pauses. Every attempt that reached
    /// (or was meant for) the vendor is pushed onto `calls`, for the store.
    pub async fn call(
        &self,
        purpose: Purpose,
        prompt_version: &str,
        request: &ChatRequest,
        calls: &mut Vec<LlmCall>,
    ) -> Result<ChatReply, CallError> {
        let mut waits = 0;
        loop {
            match self
                .call_once(purpose, prompt_version, request, calls)
                .await
            {
                Err(CallError::Provider(ProviderError::RateLimited { retry_after }))
                    if waits < MAX_RATE_LIMIT_WAITS =>
                {
                    waits += 1;
                    let wait = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
                    // Everyone in this process waits: the vendor counts our calls together.
                    // Jitter spreads the processes that were told the same instant.
                    let jitter =
                        rand::rng().random_range(0..=wait.as_millis().min(1000) as u64 / 4);
                    self.limits.pause(wait + Duration::from_millis(jitter));
                }
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        purpose: Purpose,
        prompt_version: &str,
        request: &ChatRequest,
        calls: &mut Vec<LlmCall>,
    ) -> Result<ChatReply, CallError> {
        if let Err(left) = self.breaker.check() {
            return Err(CallError::CircuitOpen(left));
        }
        if self.budget.is_spent().await {
            telemetry::llm_alert("budget");
            return Err(CallError::BudgetSpent);
        }
        let max_pause = Duration::from_secs(self.settings.max_wait_seconds);
        let _slot = self
            .limits
            .acquire(estimate_tokens(request), max_pause)
            .await
            .map_err(CallError::Paused)?;
        // The breaker may have opened while this call waited for a slot.
        if let Err(left) = self.breaker.check() {
            return Err(CallError::CircuitOpen(left));
        }
        let started = Instant::now();
        let deadline = Duration::from_secs(self.settings.timeout_seconds);
        let result = tokio::time::timeout(deadline, self.provider.chat(request))
            .await
            .unwrap_or(Err(ProviderError::Timeout));
        let latency_ms = started.elapsed().as_millis() as i64;

        let (status, usage) = match &result {
            Ok(reply) => ("ok".to_owned(), reply.usage),
            Err(e) => (e.kind().to_owned(), Default::default()),
        };
        let price = self.settings.price_of(&request.model);
        let cost_usd = (usage.input_tokens as f64 * price.input
            + usage.output_tokens as f64 * price.output)
            / 1_000_000.0;
        self.budget.add(cost_usd);
        let call = LlmCall {
            purpose: purpose.as_str(),
            // The configured name, not the vendor's dated alias: prices and labels key on it.
            model: request.model.clone(),
            prompt_version: prompt_version.to_owned(),
            status,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_usd,
            latency_ms,
        };
        telemetry::llm_call(&call, self.provider.name());
        calls.push(call);

        match result {
            Ok(reply) => {
                self.breaker.success();
                Ok(reply)
            }
            Err(e) => {
                match &e {
                    ProviderError::RateLimited { .. } => {}
                    ProviderError::QuotaExhausted(_) | ProviderError::Unauthorized(_) => {
                        // Calling again cannot help until a human acts: stop for a cool-down.
                        telemetry::llm_alert(if matches!(e, ProviderError::QuotaExhausted(_)) {
                            "quota"
                        } else {
                            "unauthorized"
                        });
                        self.breaker.trip();
                        warn!(kind = e.kind(), "LlmDisabledUntilCooldown");
                    }
                    _ => {
                        if self.breaker.failure() {
                            telemetry::llm_alert("circuit_open");
                            warn!(kind = e.kind(), "LlmCircuitOpened");
                        }
                    }
                }
                warn!(purpose = purpose.as_str(), kind = e.kind(), "LlmCallFailed");
                Err(CallError::Provider(e))
            }
        }
    }
}

/// A rough token count for the limiter: four characters a token for the prompt, plus the
/// answer's upper bound (what vendors count against tokens-per-minute).
fn estimate_tokens(request: &ChatRequest) -> u32 {
    let chars = request.system.len()
        + request
            .messages
            .iter()
            .map(|m| m.content.len())
            .sum::<usize>();
    (chars / 4) as u32 + request.max_tokens
}

/// The day's LLM spend as the CRM store records it (shared by every process).
pub struct StoreLedger(pub Arc<dyn crate::store::Store>);

#[async_trait]
impl SpendLedger for StoreLedger {
    async fn spent_since(&self, since_ms: i64) -> Result<f64, crate::store::StoreError> {
        self.0.llm_spent_since(since_ms).await
    }
}

/// The process's LLM client for `settings`, or `None` for the built-in provider. The API key
/// is read here, from the variable `llm.api_key_env` names, and kept only in the provider.
pub fn connect(
    settings: &crate::config::LlmSettings,
    ledger: Arc<dyn SpendLedger>,
) -> anyhow::Result<Option<Arc<LlmClient>>> {
    if settings.provider == LlmProviderKind::Builtin {
        return Ok(None);
    }
    let key = settings
        .effective_key_env()
        .map(|name| {
            std::env::var(&name)
                .map_err(|_| anyhow::anyhow!("llm.api_key_env: the variable {name} is not set"))
        })
        .transpose()?;
    let base = settings.effective_base_url();
    let provider: Arc<dyn LlmProvider> = match settings.provider {
        LlmProviderKind::Builtin => return Ok(None),
        LlmProviderKind::Openai => Arc::new(
            crate::ai::openai::OpenAiProvider::new(&base, key, settings.api_key_header)
                .map_err(anyhow::Error::msg)?,
        ),
        LlmProviderKind::Anthropic => Arc::new(
            crate::ai::anthropic::AnthropicProvider::new(&base, key).map_err(anyhow::Error::msg)?,
        ),
    };
    Ok(Some(Arc::new(LlmClient::new(
        provider,
        settings.clone(),
        ledger,
    ))))
}
