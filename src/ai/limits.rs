//! What keeps a process within a provider's limits: requests and tokens per minute, calls in
//! flight, a pause after a 429, and a circuit breaker. One `Limits` per provider, shared by
//! every worker task of the process.
//!
//! Time comes from tokio's clock (`tokio::time::Instant`), not the wall clock, so tests can
//! run minutes of traffic on a paused clock. governor does the rate arithmetic (GCRA) on that
//! clock; we sleep with `tokio::time::sleep` instead of governor's own timers for the same
//! reason.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// governor's clock over tokio's: instants are the time elapsed since the limiter was built.
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A slot to make one call; dropping it frees the concurrency slot.
pub struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
}

/// Requests/min, tokens/min, concurrency and the 429 pause of one provider.
pub struct Limits {
    clock: TokioClock,
    requests: Limiter,
    tokens: Limiter,
    token_burst: u32,
    in_flight: Semaphore,
    paused_until: Mutex<Option<Instant>>,
}

impl Limits {
    /// Builds the limits. Requests get a burst of one, so no 60-second window ever holds
    /// more than `requests_per_minute` calls (a larger burst would let a window hold up to
    /// twice the rate). Tokens get a burst of a tenth of a minute's worth, so one call may
    /// be large without the window being exceeded by more than that tenth.
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32, max_concurrency: usize) -> Self {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let one = NonZeroU32::MIN;
        let rpm = requests_per_minute.max(1);
        let request_quota = Quota::with_period(Duration::from_secs(60) / rpm)
            .unwrap_or_else(|| Quota::per_minute(one))
            .allow_burst(one);
        let tpm = tokens_per_minute.max(1);
        let token_burst = (tpm / 10).max(1);
        let token_quota = Quota::with_period(Duration::from_secs(60) / tpm)
            .unwrap_or_else(|| Quota::per_minute(one))
            .allow_burst(NonZeroU32::new(token_burst).unwrap_or(one));
        Self {
            clock,
            requests: RateLimiter::direct_with_clock(request_quota, clock),
            tokens: RateLimiter::direct_with_clock(token_quota, clock),
            token_burst,
            in_flight: Semaphore::new(max_concurrency.max(1)),
            paused_until: Mutex::new(None),
        }
    }

    /// How long the provider asked everyone to wait (after a 429), if it still applies.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// After a 429: no call leaves this process until `wait` has passed.
    pub fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Waits for a concurrency slot, the end of any pause up to `max_pause`, a request and
    /// `tokens` tokens. A longer pause is returned as `Err(wait)` at once, so the caller can
    /// hand the work back to the queue instead of holding it.
    pub async fn acquire(&self, tokens: u32, max_pause: Duration) -> Result<Slot<'_>, Duration> {
        if let Some(wait) = self.paused_for().filter(|w| *w > max_pause) {
            return Err(wait);
        }
        let permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Duration::from_secs(1))?;
        loop {
            match self.paused_for() {
                Some(wait) if wait > max_pause => return Err(wait),
                Some(wait) => tokio::time::sleep(wait).await,
                None => break,
            }
        }
        self.wait_for(&self.requests, 1).await;
        self.wait_for(&self.tokens, tokens.clamp(1, self.token_burst))
            .await;
        Ok(Slot { _permit: permit })
    }

    async fn wait_for(&self, limiter: &Limiter, n: u32) {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        loop {
            match limiter.check_n(n) {
                Ok(Ok(())) | Err(_) => return,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    }
}

/// Opens after `threshold` consecutive failures; while open every call falls back at once.
/// After the cool-down one call is let through: a success closes it, a failure reopens it.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
        }
    }

    /// `Err(remaining)` while open.
    pub fn check(&self) -> Result<(), Duration> {
        let open = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        match *open {
            Some(until) if until > Instant::now() => {
                Err(until.saturating_duration_since(Instant::now()))
            }
            _ => Ok(()),
        }
    }

    /// A call succeeded.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A call failed; `true` when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            self.trip();
            return true;
        }
        false
    }

    /// Opens the breaker now (a refused key or an empty account: calling again is useless).
    /// After the cool-down a single failure reopens it.
    pub fn trip(&self) {
        self.failures
            .store(self.threshold.saturating_sub(1), Ordering::Relaxed);
        *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.cooldown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_by_the_rate() {
        let limits = Limits::new(60, 1_000_000, 100);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            let _slot = limits.acquire(10, Duration::from_secs(10)).await;
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(at, vec![0, 1000, 2000, 3000, 4000]);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_limit_large_calls() {
        // 6,000 tokens/min: a burst of 600, refilled at 100 per second.
        let limits = Limits::new(10_000, 6_000, 100);
        let start = Instant::now();
        limits.acquire(600, Duration::ZERO).await.unwrap();
        limits.acquire(600, Duration::ZERO).await.unwrap();
        assert_eq!(start.elapsed().as_secs(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_pause_is_handed_back_and_a_short_one_waited() {
        let limits = Limits::new(600, 1_000_000, 4);
        limits.pause(Duration::from_secs(30));
        let wait = limits.acquire(1, Duration::from_secs(10)).await.err();
        assert!(wait.is_some_and(|w| w > Duration::from_secs(29)));
        tokio::time::advance(Duration::from_secs(25)).await;
        let start = Instant::now();
        assert!(limits.acquire(1, Duration::from_secs(10)).await.is_ok());
        assert_eq!(start.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let limits = Limits::new(1_000_000, 1_000_000, 2);
        let a = limits.acquire(1, Duration::ZERO).await.unwrap();
        let _b = limits.acquire(1, Duration::ZERO).await.unwrap();
        let third =
            tokio::time::timeout(Duration::from_secs(5), limits.acquire(1, Duration::ZERO)).await;
        assert!(third.is_err(), "a third slot was given while two were held");
        drop(a);
        assert!(limits.acquire(1, Duration::ZERO).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_threshold_and_half_opens_after_cooldown() {
        let breaker = Breaker::new(3, Duration::from_secs(60));
        assert!(!breaker.failure());
        assert!(!breaker.failure());
        assert!(breaker.check().is_ok());
        assert!(breaker.failure());
        assert!(breaker.check().is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(breaker.check().is_ok(), "half-open after the cool-down");
        assert!(breaker.failure(), "one failure reopens it");
        assert!(breaker.check().is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        breaker.success();
        assert!(!breaker.failure());
        assert!(breaker.check().is_ok());
    }
}
