//! An expiry-aware, single-flight cache: for each key, at most one fetch runs at a time; callers
//! that arrive while it runs wait for it and share its result (its value, or its error during a
//! backoff after it failed), so N concurrent callers cause one cloud call.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

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

#[derive(Debug)]
struct Slot<V, E> {
    value: Option<(V, Timestamp)>,
    /// The last failure, and until when it answers callers without a new fetch.
    failure: Option<(Instant, E)>,
    /// Consecutive failures, for the backoff.
    failures: u32,
}

/// One key's entry; its async lock is what makes fetches single-flight.
type SharedSlot<V, E> = Arc<tokio::sync::Mutex<Slot<V, E>>>;

/// A single-flight cache from `K` to `V`. After a failed fetch, callers get that error without a
/// new fetch for a backoff that doubles with each consecutive failure (from `base` up to `max`),
/// so an outage costs one cloud call per backoff period, however many callers there are.
#[derive(Debug)]
pub struct Cache<K, V, E> {
    slots: Mutex<HashMap<K, SharedSlot<V, E>>>,
    base: Duration,
    max: Duration,
}

impl<K, V, E> Default for Cache<K, V, E> {
    /// A short failure backoff: it only makes callers that queue behind a failing fetch (several
    /// instances sharing one identity, fetched at once) share its error. When to try again is the
    /// caller's decision: the controller's refresher caps its retries by the time the current
    /// passwords have left, which a long backoff here would defeat.
    fn default() -> Self {
        Cache::with_failure_backoff(Duration::from_millis(250), Duration::from_secs(1))
    }
}

impl<K, V, E> Cache<K, V, E> {
    pub fn with_failure_backoff(base: Duration, max: Duration) -> Self {
        Cache {
            slots: Mutex::new(HashMap::new()),
            base,
            max,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> Cache<K, V, E> {
    fn slot(&self, key: &K) -> SharedSlot<V, E> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Slot {
                    value: None,
                    failure: None,
                    failures: 0,
                }))
            })
            .clone()
    }

    /// The cached value for `key` if it is not due for refresh; otherwise the result of `fetch`,
    /// which returns the value and when to fetch it again.
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Timestamp), E>>,
    {
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        if let Some((value, refresh_at)) = &slot.value
            && Timestamp::now() < *refresh_at
        {
            return Ok(value.clone());
        }
        // A recent failure answers for its backoff period: a permanent error is not fetched again
        // once per waiting caller, nor once per namespace during an outage.
        if let Some((until, error)) = &slot.failure
            && Instant::now() < *until
        {
            return Err(error.clone());
        }
        match fetch().await {
            Ok((value, refresh_at)) => {
                slot.value = Some((value.clone(), refresh_at));
                slot.failure = None;
                slot.failures = 0;
                Ok(value)
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let backoff = self
                    .base
                    .saturating_mul(1u32 << (slot.failures - 1).min(16))
                    .min(self.max);
                slot.failure = Some((Instant::now() + backoff, e.clone()));
                Err(e)
            }
        }
    }

    /// Forgets the entry of `key`, so the next call fetches.
    pub fn invalidate(&self, key: &K) {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn refresh_point_is_threshold_before_expiry() {
        assert_eq!(
            refresh_point(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T01:00:00Z"),
                Duration::from_secs(15 * 60)
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
                Duration::from_secs(60)
            ),
            ts("2026-01-01T00:00:45Z")
        );
        // A threshold longer than the life: half-life too.
        assert_eq!(
            refresh_point(
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T00:10:00Z"),
                Duration::from_secs(3600)
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

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache: Arc<Cache<&str, u32, String>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&"k", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok((7, Timestamp::now() + SignedDuration::from_secs(60)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.ok().and_then(Result::ok), Some(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_is_shared_by_the_callers_waiting_for_it_and_retried_after_a_backoff() {
        let cache: Arc<Cache<&str, u32, String>> = Arc::new(Cache::with_failure_backoff(
            Duration::from_millis(200),
            Duration::from_millis(400),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&"k", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err("NoPermission".to_owned())
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.ok().and_then(Result::err).as_deref(),
                Some("NoPermission")
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Within the backoff, callers get the error without a fetch.
        let again = cache
            .get(&"k", || async {
                Ok((1, Timestamp::now() + SignedDuration::from_secs(60)))
            })
            .await;
        assert_eq!(again, Err("NoPermission".to_owned()));
        // After it, a caller fetches again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = cache
            .get(&"k", || async {
                Ok((1, Timestamp::now() + SignedDuration::from_secs(60)))
            })
            .await;
        assert_eq!(v, Ok(1));
    }

    #[tokio::test]
    async fn values_are_fetched_again_once_due() {
        let cache: Cache<&str, u32, String> = Cache::default();
        let due_now = Timestamp::now();
        assert_eq!(cache.get(&"k", || async { Ok((1, due_now)) }).await, Ok(1));
        let later = Timestamp::now() + SignedDuration::from_secs(60);
        assert_eq!(cache.get(&"k", || async { Ok((2, later)) }).await, Ok(2));
        assert_eq!(cache.get(&"k", || async { Ok((3, later)) }).await, Ok(2));
        cache.invalidate(&"k");
        assert_eq!(cache.get(&"k", || async { Ok((4, later)) }).await, Ok(4));
    }
}
