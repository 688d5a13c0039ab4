//! When every login and credential is fetched, and when a failure is tried again: the one owner
//! of refresh timing. Everything else asks it; nothing else computes a refresh point, a window or
//! a backoff. Pure functions of time, the configured `expiring-threshold`, the spread window and
//! the failure count.
//!
//! - A login (or an STS credential) is refreshed `threshold` before it stops working, but never
//!   earlier than half-way through its life ([`refresh_point`]).
//! - When many Secrets hold a login, it is fetched a `window` ahead of that point, so their
//!   rewrites can be spread over the window ([`window`], [`fetch_at`]; the write instants are
//!   `controller::spread`'s).
//! - A failure is retried with a backoff that doubles from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`],
//!   capped by a quarter of the time the content in the Secrets has left, so no retry is ever
//!   scheduled after the passwords expire; once they have, retries come every
//!   [`EXPIRED_RETRY`] at most ([`retry_delay`]).
//!
//! The HTTP client retries only transport failures within one call (the request may never have
//! reached the cloud); a cloud answer, error or not, comes back to the caller, whose next attempt
//! is scheduled here.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// How often the domains of an Enterprise instance are listed again.
pub const DOMAINS_TTL: SignedDuration = SignedDuration::from_mins(10);
/// How soon a failed re-listing of known domains is tried again (the known ones stay in use).
pub const DOMAINS_RETRY: SignedDuration = SignedDuration::from_mins(1);
/// How soon a failed write of the controller's record is tried again.
pub const RECORD_RETRY: Duration = Duration::from_secs(2);
/// The first retry after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Retries never come closer together than this.
pub const MIN_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between retries once the passwords in the Secrets have expired (or none was
/// ever obtained).
pub const EXPIRED_RETRY: Duration = Duration::from_secs(3);
/// The longest window a refresh is spread over.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
/// The refresher's longest and shortest sleep.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
pub const MIN_SLEEP: Duration = Duration::from_millis(50);

/// When a value fetched at `fetched_at` and expiring at `expires_at` should be fetched again:
/// `threshold` before it expires, but never earlier than half-way through its life, so a threshold
/// longer than the lifetime cannot make every call fetch again.
pub fn refresh_point(
    fetched_at: Timestamp,
    expires_at: Timestamp,
    threshold: Duration,
) -> Timestamp {
    let threshold = SignedDuration::try_from(threshold).unwrap_or(SignedDuration::MAX);
    let life = expires_at.duration_since(fetched_at);
    let by_threshold = expires_at.checked_sub(threshold).unwrap_or(Timestamp::MIN);
    let half_life = fetched_at.checked_add(life / 2).unwrap_or(fetched_at);
    by_threshold.max(half_life)
}

/// When a credential obtained `now` is fetched again: at its [`refresh_point`] if it expires, and
/// at the latest `reread` from now when its source is re-read on a period (the managed role's
/// Secret, which ACK rotates); never, for a static AccessKey.
pub fn credential_refresh_at(
    now: Timestamp,
    expiration: Option<Timestamp>,
    threshold: Duration,
    reread: Option<Duration>,
) -> Timestamp {
    let by_expiry = expiration.map_or(Timestamp::MAX, |exp| refresh_point(now, exp, threshold));
    match reread.and_then(|d| SignedDuration::try_from(d).ok()) {
        Some(d) => by_expiry.min(now.checked_add(d).unwrap_or(Timestamp::MAX)),
        None => by_expiry,
    }
}

/// How long a refresh of `secrets` Secrets written at `rate` per second takes, at most
/// [`MAX_WINDOW`] and at most a third of `threshold` (so the last write still lands well before
/// the passwords come close to expiry). Zero for a handful of Secrets.
pub fn window(secrets: usize, rate: u32, threshold: Duration) -> Duration {
    let rate = f64::from(rate.max(1));
    #[allow(clippy::cast_precision_loss)]
    let needed = Duration::from_secs_f64(secrets as f64 / rate);
    needed.min(MAX_WINDOW).min(threshold / 3)
}

/// When a login obtained at `obtained_at` with refresh point `refresh_at` is fetched again:
/// `window` before that point, but never before half-way from when it was obtained to the
/// refresh point (a long window cannot make it refresh in a loop).
pub fn fetch_at(obtained_at: Timestamp, refresh_at: Timestamp, window: Duration) -> Timestamp {
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::ZERO);
    let early = refresh_at.checked_sub(window).unwrap_or(refresh_at);
    let half = obtained_at
        .checked_add(refresh_at.duration_since(obtained_at) / 2)
        .unwrap_or(refresh_at);
    early.max(half).min(refresh_at)
}

/// When to try again after `failures` consecutive failures, given until when the content in the
/// Secrets works (`valid_until`). `jitter` in [0, 1) spreads retries of several replicas.
pub fn retry_delay(
    failures: u32,
    now: Timestamp,
    valid_until: Option<Timestamp>,
    jitter: f64,
) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let backoff = FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    let backoff = backoff.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let cap = match valid_until {
        Some(v) if v > now => {
            let left = Duration::try_from(v.duration_since(now)).unwrap_or(Duration::ZERO);
            left / 4
        }
        _ => EXPIRED_RETRY,
    };
    backoff.min(cap).max(MIN_RETRY)
}

/// `now` plus `delay`, saturating.
pub fn after(now: Timestamp, delay: Duration) -> Timestamp {
    now.checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// The refresh rule in force: the configured threshold and the window the current number of
/// managed Secrets needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub threshold: Duration,
    pub window: Duration,
}

impl Schedule {
    /// The rule for `secrets` managed Secrets written at `rate` per second.
    pub fn new(threshold: Duration, secrets: usize, rate: u32) -> Schedule {
        Schedule {
            threshold,
            window: window(secrets, rate, threshold),
        }
    }

    /// When a login obtained at `obtained_at` and working until `usable_until` is fetched again.
    pub fn login_due(&self, obtained_at: Timestamp, usable_until: Timestamp) -> Timestamp {
        let refresh = refresh_point(obtained_at, usable_until, self.threshold);
        fetch_at(obtained_at, refresh, self.window)
    }

    /// The instant a refresh fetched at `now` may spread its writes until, if it is spread at all.
    pub fn spread_until(&self, now: Timestamp) -> Option<Timestamp> {
        (!self.window.is_zero()).then(|| after(now, self.window))
    }
}

/// When something due at `need` (`None`: now) is fetched, given a pending retry: never before
/// the retry.
pub fn not_before_retry(need: Option<Timestamp>, retry_at: Option<Timestamp>) -> Option<Timestamp> {
    match (need, retry_at) {
        (Some(n), Some(r)) => Some(n.max(r)),
        (None, Some(r)) => Some(r),
        (n, None) => n,
    }
}

/// How long the refresher sleeps at `now` before the earliest of `fetches` and an optional
/// retry of the record, within [`MIN_SLEEP`] and [`MAX_SLEEP`].
pub fn sleep_until_next(
    now: Timestamp,
    fetches: impl IntoIterator<Item = Timestamp>,
    record_retry: Option<Duration>,
) -> Duration {
    fetches
        .into_iter()
        .min()
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO))
        .unwrap_or(MAX_SLEEP)
        .min(record_retry.unwrap_or(Duration::MAX))
        .clamp(MIN_SLEEP, MAX_SLEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_point_is_threshold_before_expiry() {
        assert_eq!(
            refresh_point(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T01:00:00Z"),
                S(15 * 60)
            ),
            ts("2026-01-01T00:45:00Z")
        );
    }

    #[test]
    fn refresh_point_never_before_half_life() {
        // 90 s token, 60 s threshold: refresh at 45 s (not at 30 s).
        assert_eq!(
            refresh_point(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T00:01:30Z"),
                S(60)
            ),
            ts("2026-01-01T00:00:45Z")
        );
        // A threshold longer than the life: half-life too.
        assert_eq!(
            refresh_point(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T00:10:00Z"),
                S(3600)
            ),
            ts("2026-01-01T00:05:00Z")
        );
        // An absurd threshold does not overflow.
        assert_eq!(
            refresh_point(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T00:10:00Z"),
                Duration::MAX
            ),
            ts("2026-01-01T00:05:00Z")
        );
    }

    #[test]
    fn a_credential_is_refreshed_before_expiry_or_when_its_source_is_reread() {
        let now = ts("2026-01-01T00:00:00Z");
        let exp = Some(ts("2026-01-01T01:00:00Z"));
        assert_eq!(
            credential_refresh_at(now, exp, S(900), None),
            ts("2026-01-01T00:45:00Z")
        );
        assert_eq!(
            credential_refresh_at(now, exp, S(900), Some(S(60))),
            ts("2026-01-01T00:01:00Z"),
            "re-read sooner than the refresh point"
        );
        assert_eq!(
            credential_refresh_at(now, exp, S(900), Some(S(7200))),
            ts("2026-01-01T00:45:00Z")
        );
        assert_eq!(
            credential_refresh_at(now, None, S(900), None),
            Timestamp::MAX
        );
        assert_eq!(
            credential_refresh_at(now, None, S(900), Some(S(60))),
            ts("2026-01-01T00:01:00Z")
        );
        assert_eq!(
            credential_refresh_at(now, None, S(900), Some(Duration::MAX)),
            Timestamp::MAX
        );
    }

    #[test]
    fn the_window_grows_with_the_secrets_within_its_bounds() {
        let t = S(15 * 60);
        assert_eq!(window(20, 50, t), Duration::from_millis(400));
        assert_eq!(window(10_000, 50, t), S(200));
        assert_eq!(window(100_000, 50, t), MAX_WINDOW);
        // A short threshold keeps the whole refresh in its first third.
        assert_eq!(window(10_000, 50, S(60)), S(20));
        assert_eq!(window(0, 50, t), Duration::ZERO);
        assert_eq!(window(10, 0, t), S(10), "a zero rate counts as 1/s");
    }

    #[test]
    fn the_fetch_comes_a_window_early_but_not_too_early() {
        let obtained = ts("2026-11-24T10:00:00Z");
        let refresh = ts("2026-11-24T10:45:00Z");
        assert_eq!(
            fetch_at(obtained, refresh, S(200)),
            ts("2026-11-24T10:41:40Z")
        );
        assert_eq!(fetch_at(obtained, refresh, Duration::ZERO), refresh);
        // Never before half-way to the refresh point.
        assert_eq!(
            fetch_at(obtained, refresh, S(3600)),
            ts("2026-11-24T10:22:30Z")
        );
        // A refresh point already passed stays as it is.
        assert_eq!(fetch_at(refresh, obtained, S(60)), obtained);
    }

    #[test]
    fn a_schedule_fetches_a_login_a_window_before_its_refresh_point() {
        let obtained = ts("2026-11-24T10:00:00Z");
        let until = ts("2026-11-24T11:00:00Z");
        let s = Schedule::new(S(900), 10_000, 50);
        assert_eq!(s.window, S(200));
        assert_eq!(s.login_due(obtained, until), ts("2026-11-24T10:41:40Z"));
        assert_eq!(s.spread_until(obtained), Some(ts("2026-11-24T10:03:20Z")));
        let few = Schedule::new(S(900), 0, 50);
        assert_eq!(few.login_due(obtained, until), ts("2026-11-24T10:45:00Z"));
        assert_eq!(few.spread_until(obtained), None, "nothing to spread");
    }

    #[test]
    fn a_pending_retry_is_never_overtaken() {
        let (a, b) = (ts("2026-11-24T10:00:00Z"), ts("2026-11-24T10:05:00Z"));
        assert_eq!(not_before_retry(Some(a), Some(b)), Some(b));
        assert_eq!(not_before_retry(Some(b), Some(a)), Some(b));
        assert_eq!(not_before_retry(None, Some(a)), Some(a));
        assert_eq!(not_before_retry(Some(a), None), Some(a));
        assert_eq!(not_before_retry(None, None), None);
    }

    #[test]
    fn the_refresher_sleeps_until_the_earliest_fetch_within_bounds() {
        let now = ts("2026-11-24T10:00:00Z");
        let in_ = |s: i64| now + SignedDuration::from_secs(s);
        assert_eq!(sleep_until_next(now, [in_(30), in_(10)], None), S(10));
        assert_eq!(sleep_until_next(now, [in_(30)], Some(S(2))), S(2));
        assert_eq!(sleep_until_next(now, [], None), MAX_SLEEP);
        assert_eq!(sleep_until_next(now, [in_(7200)], None), MAX_SLEEP);
        assert_eq!(sleep_until_next(now, [in_(-5)], None), MIN_SLEEP, "overdue");
        assert_eq!(sleep_until_next(now, [], Some(Duration::ZERO)), MIN_SLEEP);
    }

    #[test]
    fn retries_back_off_but_never_past_a_quarter_of_the_time_left() {
        let now = ts("2026-11-24T10:00:00Z");
        let far = Some(ts("2026-11-24T11:00:00Z"));
        // Far from expiry: plain exponential backoff (jitter 1 = the ceiling).
        assert_eq!(retry_delay(1, now, far, 1.0), S(1));
        assert_eq!(retry_delay(2, now, far, 1.0), S(2));
        assert_eq!(retry_delay(4, now, far, 1.0), S(8));
        assert_eq!(retry_delay(30, now, far, 1.0), MAX_BACKOFF);
        assert_eq!(retry_delay(4, now, far, 0.0), S(4));
        assert_eq!(retry_delay(4, now, far, 0.5), S(6));
        assert_eq!(retry_delay(4, now, far, 7.0), S(8), "jitter is clamped");
        // 100 s left: never more than 25 s, however many failures.
        let soon = Some(ts("2026-11-24T10:01:40Z"));
        assert_eq!(retry_delay(30, now, soon, 1.0), S(25));
        // As expiry nears the retries get frequent, down to the floor.
        let close = Some(ts("2026-11-24T10:00:01Z"));
        assert_eq!(retry_delay(30, now, close, 1.0), MIN_RETRY);
        // Expired, or nothing obtained yet: every few seconds at most.
        assert_eq!(retry_delay(30, now, Some(now), 1.0), EXPIRED_RETRY);
        assert_eq!(retry_delay(30, now, None, 1.0), EXPIRED_RETRY);
        assert_eq!(retry_delay(1, now, None, 0.0), MIN_RETRY);
    }

    #[test]
    fn no_retry_is_scheduled_after_expiry_while_a_password_is_valid() {
        let now = ts("2026-11-24T10:00:00Z");
        for left in [1u64, 2, 5, 10, 30, 60, 300, 900, 3600] {
            let until = now + SignedDuration::from_secs(i64::try_from(left).unwrap_or(0));
            let mut t = now;
            let mut retries = 0;
            for failures in 1..200 {
                let d = retry_delay(failures, t, Some(until), 1.0);
                t += SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO);
                if t >= until {
                    break;
                }
                retries += 1;
                assert!(
                    t < until || d <= MIN_RETRY,
                    "left {left}: a retry after expiry"
                );
            }
            // Bounded: at most one a minute far from expiry, then a geometric shrink of the time
            // left down to the floor.
            let bound = left / MAX_BACKOFF.as_secs() + 30;
            assert!(
                retries <= bound,
                "left {left}: {retries} retries before expiry (bound {bound})"
            );
        }
    }

    #[test]
    fn after_saturates() {
        let now = ts("2026-11-24T10:00:00Z");
        assert_eq!(after(now, S(60)), ts("2026-11-24T10:01:00Z"));
        assert_eq!(after(now, Duration::MAX), Timestamp::MAX);
    }
}
