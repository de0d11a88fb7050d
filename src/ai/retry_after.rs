//! The vendor's "wait this long" hints on a reply: `retry-after-ms`, `Retry-After` (seconds
//! or an HTTP date), OpenAI's `x-ratelimit-reset-*` (Go durations) and Anthropic's
//! `anthropic-ratelimit-*-reset` (RFC 3339 instants), parsed by hand: no date crate needed
//! for four formats.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// The longest wait taken from a vendor's hint. A longer hint is cut to this; the caller
/// decides whether to hold a worker that long or requeue.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// OpenAI's reset hints, as Go durations (`6m0s`).
const DURATION_RESETS: [&str; 2] = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"];

/// Anthropic's reset hints, as RFC 3339 instants.
const INSTANT_RESETS: [&str; 4] = [
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// How long a vendor asked us to wait, from the headers of its reply; `now` dates the
/// instants some vendors send.
///
/// `retry-after-ms` wins, then `Retry-After` (seconds or an IMF-fixdate HTTP date); failing
/// both, the longest of the rate-limit reset hints (OpenAI's Go durations, Anthropic's RFC
/// 3339 instants). Unreadable values are skipped, instants past are zero, and the wait is
/// cut to [`MAX_RETRY_AFTER`] and rounded to the millisecond.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let until = |at: f64| (at - now).max(0.0);

    let seconds_or_date = |value: &str| decimal(value).or_else(|| http_date(value).map(until));
    let seconds = text_of(headers, "retry-after-ms")
        .and_then(decimal)
        .map(|ms| ms / 1000.0)
        .or_else(|| text_of(headers, "retry-after").and_then(seconds_or_date))
        .or_else(|| {
            let durations = DURATION_RESETS
                .iter()
                .filter_map(|name| text_of(headers, name));
            let instants = INSTANT_RESETS
                .iter()
                .filter_map(|name| text_of(headers, name));
            durations
                .filter_map(go_duration)
                .chain(instants.filter_map(rfc3339).map(until))
                .reduce(f64::max)
        })?;

    let millis = (seconds.min(MAX_RETRY_AFTER.as_secs_f64()) * 1000.0).round();
    Some(Duration::from_millis(millis as u64))
}

/// A header's value as trimmed text, if it is ASCII.
fn text_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// A non-negative decimal number of digits and at most one point (`7`, `1.5`).
fn decimal(text: &str) -> Option<f64> {
    let well_formed = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    well_formed.then(|| text.parse().ok()).flatten()
}

/// Exactly `len` ASCII digits as a number.
fn digits(text: &str, len: usize) -> Option<i64> {
    let well_formed = text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| text.parse().ok()).flatten()
}

/// A Go duration (`1s`, `6m0s`, `20ms`, `1m30.5s`, `0`) in seconds. Negative ones are refused.
fn go_duration(text: &str) -> Option<f64> {
    if text == "0" {
        return Some(0.0);
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';

    let (mut rest, mut seconds) = (text, 0.0);
    while !rest.is_empty() {
        let (number, tail) = rest.split_at(rest.find(|c| !is_number(c))?);
        let (unit, tail) = tail.split_at(tail.find(is_number).unwrap_or(tail.len()));
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += decimal(number)? * scale;
        rest = tail;
    }
    (!text.is_empty()).then_some(seconds)
}

/// An RFC 3339 instant (`2026-12-03T15:30:05Z`, `…05.250+01:00`) in Unix seconds.
fn rfc3339(text: &str) -> Option<f64> {
    let (date, time) = text.split_once(['T', 't'])?;
    let (clock, offset) = match time.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0.0),
        None => {
            let (clock, zone) = time.split_at(time.rfind(['+', '-'])?);
            let (hours, minutes) = zone[1..].split_once(':')?;
            let (hours, minutes) = (digits(hours, 2)?, digits(minutes, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1.0 } else { 1.0 };
            (clock, sign * (hours * 3600 + minutes * 60) as f64)
        }
    };

    let (whole, fraction) = match clock.split_once('.') {
        Some((whole, fraction)) => (whole, decimal_fraction(fraction)?),
        None => (clock, 0.0),
    };
    let mut parts = date.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }

    let days = epoch_days(digits(year, 4)?, digits(month, 2)?, digits(day, 2)?)?;
    Some(days as f64 * 86400.0 + time_of_day(whole)? + fraction - offset)
}

/// The digits after a decimal point (`250` → 0.25); at least one.
fn decimal_fraction(text: &str) -> Option<f64> {
    let well_formed = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| decimal(&format!("0.{text}"))).flatten()
}

/// An IMF-fixdate HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) in Unix seconds. The obsolete
/// RFC 850 and asctime forms, which RFC 9110 forbids senders to use, are not read.
fn http_date(text: &str) -> Option<f64> {
    let (_weekday, rest) = text.split_once(", ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, "GMT"] = fields[..] else {
        return None;
    };

    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let days = epoch_days(digits(year, 4)?, month, digits(day, 2)?)?;
    Some(days as f64 * 86400.0 + time_of_day(clock)?)
}

/// `HH:MM:SS` in seconds since midnight (a leap second's `60` allowed).
fn time_of_day(text: &str) -> Option<f64> {
    let mut parts = text.split(':');
    let (hours, minutes, seconds) = (parts.next()?, parts.next()?, parts.next()?);
    let (hours, minutes, seconds) = (digits(hours, 2)?, digits(minutes, 2)?, digits(seconds, 2)?);
    let valid = parts.next().is_none() && hours < 24 && minutes < 60 && seconds <= 60;
    valid.then_some((hours * 3600 + minutes * 60 + seconds) as f64)
}

/// Days from 1970-01-01 to a date of the Gregorian calendar, or `None` for a date that does
/// not exist or comes before 1970 (no vendor hint points there).
fn epoch_days(year: i64, month: i64, day: i64) -> Option<i64> {
    const DAYS_BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        2 if is_leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if year < 1970 || !(1..=month_days).contains(&day) {
        return None;
    }

    let leap_days_before = |y: i64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let leap_day_passed = i64::from(is_leap && month > 2);
    let whole_years = 365 * (year - 1970) + leap_days_before(year) - leap_days_before(1970);
    Some(whole_years + DAYS_BEFORE_MONTH[(month - 1) as usize] + leap_day_passed + day - 1)
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    /// 2026-12-03T15:30:05Z.
    const DECEMBER_3: u64 = 1_796_311_805;

    fn at(unix_seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_seconds)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn wait(pairs: &[(&str, &str)], now: SystemTime) -> Option<Duration> {
        retry_after(&headers(pairs), now)
    }

    #[test]
    fn retry_after_ms_is_read_as_milliseconds() {
        assert_eq!(
            wait(&[("retry-after-ms", "1500")], at(0)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            wait(&[("retry-after-ms", "22.4")], at(0)),
            Some(Duration::from_millis(22))
        );
    }

    #[test]
    fn retry_after_seconds_may_be_fractional() {
        assert_eq!(
            wait(&[("Retry-After", "7")], at(0)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait(&[("retry-after", "1.5")], at(0)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(wait(&[("retry-after", " 0 ")], at(0)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_http_date_counts_from_now() {
        let now = at(784_111_777 - 30);

        let wait = wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], now);

        assert_eq!(wait, Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_date_already_past_means_no_wait() {
        let now = at(784_111_777 + 30);

        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], now),
            Some(Duration::ZERO)
        );
        let reset = [("anthropic-ratelimit-tokens-reset", "2026-12-03T15:30:05Z")];
        assert_eq!(wait(&reset, at(DECEMBER_3 + 5)), Some(Duration::ZERO));
    }

    #[test]
    fn openai_reset_hints_are_go_durations() {
        let cases = [
            ("1s", 1000),
            ("6m0s", 360_000),
            ("20ms", 20),
            ("1m30.5s", 90_500),
            ("0.5s", 500),
            ("2m3.5s", 123_500),
            ("1h", 3_600_000),
            ("250us", 0),
            ("0", 0),
        ];
        for (value, millis) in cases {
            let wait = wait(&[("x-ratelimit-reset-requests", value)], at(0));
            assert_eq!(wait, Some(Duration::from_millis(millis)), "{value}");
        }
    }

    #[test]
    fn anthropic_reset_hints_are_rfc3339_instants() {
        let cases = [
            ("2026-12-03T15:30:17Z", 12_000),
            ("2026-12-03T15:30:17.250Z", 12_250),
            ("2026-12-03t15:30:17z", 12_000),
            ("2026-12-03T16:30:17+01:00", 12_000),
            ("2026-12-03T14:30:17-01:00", 12_000),
        ];
        for (value, millis) in cases {
            let wait = wait(
                &[("anthropic-ratelimit-requests-reset", value)],
                at(DECEMBER_3),
            );
            assert_eq!(wait, Some(Duration::from_millis(millis)), "{value}");
        }
    }

    #[test]
    fn dates_across_leap_days_are_counted_right() {
        assert_eq!(rfc3339("2024-02-29T23:59:59Z"), Some(1_709_251_199.0));
        assert_eq!(rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(rfc3339("1900-03-01T00:00:00Z"), None);
    }

    #[test]
    fn the_longest_reset_hint_wins() {
        let pairs = [
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2026-12-03T15:31:05Z",
            ),
        ];

        assert_eq!(wait(&pairs, at(DECEMBER_3)), Some(Duration::from_secs(360)));
    }

    #[test]
    fn retry_after_ms_beats_retry_after_which_beats_reset_hints() {
        let all = [
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("retry-after", "7"),
            ("retry-after-ms", "250"),
        ];

        assert_eq!(wait(&all, at(0)), Some(Duration::from_millis(250)));
        assert_eq!(wait(&all[..2], at(0)), Some(Duration::from_secs(7)));
        assert_eq!(wait(&all[..1], at(0)), Some(Duration::from_secs(360)));
    }

    #[test]
    fn waits_are_capped_at_an_hour() {
        let huge = "9".repeat(400);

        assert_eq!(
            wait(&[("retry-after", "86400")], at(0)),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            wait(&[("retry-after-ms", huge.as_str())], at(0)),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-tokens", "100h")], at(0)),
            Some(MAX_RETRY_AFTER)
        );
        let far = [("anthropic-ratelimit-tokens-reset", "9999-12-31T23:59:59Z")];
        assert_eq!(wait(&far, at(DECEMBER_3)), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn garbage_hints_are_ignored() {
        let garbage_everywhere = [
            "",
            "soon",
            "-5",
            "+5",
            "NaN",
            "inf",
            "1e3",
            "1.2.3",
            ".",
            "0x10",
            "5 5",
            "-1s",
            "1x",
            "s",
            "1s-",
            "2026-13-03T15:30:05Z",
            "2026-12-03T25:30:05Z",
            "2026-12-03T15:30:05",
            "2026-12-03 15:30:05Z",
            "2026-12-03T15:30:05+1:00",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
        ];
        let names = [
            "retry-after-ms",
            "retry-after",
            "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-tokens-reset",
        ];
        for value in garbage_everywhere {
            for name in names {
                assert_eq!(
                    wait(&[(name, value)], at(DECEMBER_3)),
                    None,
                    "{name}: {value:?}"
                );
            }
        }
    }

    #[test]
    fn each_hint_is_read_only_in_its_own_format() {
        let misplaced = [
            ("retry-after", "7s"),
            ("retry-after", "2026-12-03T15:30:17Z"),
            ("retry-after-ms", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("x-ratelimit-reset-requests", "5"),
            ("x-ratelimit-reset-requests", "2026-12-03T15:30:17Z"),
            ("anthropic-ratelimit-requests-reset", "7s"),
        ];
        for (name, value) in misplaced {
            assert_eq!(
                wait(&[(name, value)], at(DECEMBER_3)),
                None,
                "{name}: {value:?}"
            );
        }
    }

    #[test]
    fn a_garbage_hint_gives_way_to_the_next_one() {
        let pairs = [("retry-after-ms", "later"), ("retry-after", "7")];

        assert_eq!(wait(&pairs, at(0)), Some(Duration::from_secs(7)));
    }

    #[test]
    fn non_ascii_header_values_are_ignored() {
        let mut map = HeaderMap::new();
        map.insert("retry-after", HeaderValue::from_bytes(b"7\xff").unwrap());

        assert_eq!(retry_after(&map, at(0)), None);
        assert_eq!(retry_after(&HeaderMap::new(), at(0)), None);
    }
}
