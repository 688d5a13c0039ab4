//! Spreading a refresh. When the passwords of 10,000 namespaces are renewed, the writes must come
//! as a steady stream, never as a spike, and still all land before the refresh point. So the new
//! password is fetched a window ahead of the refresh point, and the namespaces are written at
//! evenly spaced instants across that window. Pure functions of time and counts.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// The longest window a refresh is spread over.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);

/// How long a refresh of `secrets` Secrets written at `rate` per second takes, at most
/// `MAX_WINDOW` and at most a third of `threshold` (so the last write still lands well before
/// the passwords come close to expiry). Zero for a handful of Secrets.
pub fn window(secrets: usize, rate: u32, threshold: Duration) -> Duration {
    let rate = f64::from(rate.max(1));
    #[allow(clippy::cast_precision_loss)]
    let needed = Duration::from_secs_f64(secrets as f64 / rate);
    needed.min(MAX_WINDOW).min(threshold / 3)
}

/// When a login obtained at `obtained_at` and working until `usable_until` is fetched again:
/// `window` before its refresh point `refresh_at`, but never before half-way from when it was
/// obtained to the refresh point (a long window cannot make it refresh in a loop).
pub fn fetch_at(obtained_at: Timestamp, refresh_at: Timestamp, window: Duration) -> Timestamp {
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::ZERO);
    let early = refresh_at.checked_sub(window).unwrap_or(refresh_at);
    let half = obtained_at
        .checked_add(refresh_at.duration_since(obtained_at) / 2)
        .unwrap_or(refresh_at);
    early.max(half).min(refresh_at)
}

/// The instants, from `start` until `end`, at which `count` namespaces are written: evenly
/// spaced, the first at `start`, none at or after `end` (all at `start` when there is no time).
pub fn slots(start: Timestamp, end: Timestamp, count: usize) -> Vec<Timestamp> {
    let span = end.duration_since(start);
    if count == 0 {
        return Vec::new();
    }
    if span <= SignedDuration::ZERO {
        return vec![start; count];
    }
    let count_i = i32::try_from(count).unwrap_or(i32::MAX);
    (0..count)
        .map(|i| {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            start.checked_add(span / count_i * i).unwrap_or(start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_window_grows_with_the_secrets_within_its_bounds() {
        let t = Duration::from_secs(15 * 60);
        assert_eq!(window(20, 50, t), Duration::from_millis(400));
        assert_eq!(window(10_000, 50, t), Duration::from_secs(200));
        assert_eq!(window(100_000, 50, t), MAX_WINDOW);
        // A short threshold keeps the whole refresh in its first third.
        assert_eq!(
            window(10_000, 50, Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        assert_eq!(window(0, 50, t), Duration::ZERO);
        assert_eq!(
            window(10, 0, t),
            Duration::from_secs(10),
            "a zero rate counts as 1/s"
        );
    }

    #[test]
    fn the_fetch_comes_a_window_early_but_not_too_early() {
        let obtained = ts("2026-11-24T10:00:00Z");
        let refresh = ts("2026-11-24T10:45:00Z");
        assert_eq!(
            fetch_at(obtained, refresh, Duration::from_secs(200)),
            ts("2026-11-24T10:41:40Z")
        );
        assert_eq!(fetch_at(obtained, refresh, Duration::ZERO), refresh);
        // Never before half-way to the refresh point.
        assert_eq!(
            fetch_at(obtained, refresh, Duration::from_secs(3600)),
            ts("2026-11-24T10:22:30Z")
        );
        // A refresh point already passed stays as it is.
        assert_eq!(
            fetch_at(refresh, obtained, Duration::from_secs(60)),
            obtained
        );
    }

    #[test]
    fn slots_are_even_and_end_before_the_end() {
        let start = ts("2026-11-24T10:00:00Z");
        let end = ts("2026-11-24T10:03:20Z");
        let s = slots(start, end, 10_000);
        assert_eq!(s.len(), 10_000);
        assert_eq!(s[0], start);
        assert!(s.iter().all(|t| *t < end));
        // A steady stream: 50 a second in every second of the window.
        let per_second: std::collections::BTreeMap<i64, usize> =
            s.iter().fold(Default::default(), |mut m, t| {
                *m.entry(t.as_second()).or_default() += 1;
                m
            });
        assert_eq!(per_second.len(), 200);
        assert!(per_second.values().all(|n| *n == 50), "{per_second:?}");
        assert_eq!(slots(start, start, 3), vec![start; 3]);
        assert!(slots(start, end, 0).is_empty());
    }
}
