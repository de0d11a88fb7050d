//! Capped exponential backoff with jitter, shared by every queue backend.

use rand::Rng;

/// Delay before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped at `max`, then a random
/// point in its upper half so that leads failing together do not retry together.
pub fn delay_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let ceiling = ceiling_ms(attempt, base_ms, max_ms);
    let floor = ceiling / 2;
    rand::rng().random_range(floor..=ceiling)
}

/// The delay before jitter: `base * 2^(attempt-1)`, capped at `max`, at least 1 ms.
pub fn ceiling_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let exponent = attempt.saturating_sub(1).min(32);
    base_ms.saturating_mul(1u64 << exponent).min(max_ms).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_then_caps_and_stays_in_the_upper_half() {
        for _ in 0..100 {
            let first = delay_ms(1, 500, 60_000);
            let third = delay_ms(3, 500, 60_000);
            let late = delay_ms(40, 500, 60_000);

            assert!((250..=500).contains(&first), "{first}");
            assert!((1000..=2000).contains(&third), "{third}");
            assert!((30_000..=60_000).contains(&late), "{late}");
        }
    }
}
