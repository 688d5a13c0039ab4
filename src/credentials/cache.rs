//! An expiry-aware, single-flight cache: for each key, at most one fetch runs at a time; callers
//! that arrive while it runs wait for it and share its result, its value or its error, so N
//! concurrent callers cause one cloud call. A failure is shared only with the callers that waited
//! for that fetch: when to try again is never decided here ([`crate::timing`] does, for the
//! refresher).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

#[derive(Debug)]
struct Slot<V, E> {
    /// The value and when it is fetched again.
    value: Option<(V, Timestamp)>,
    /// The last fetch's error, with the number of that fetch.
    failure: Option<(u64, E)>,
}

/// One key's entry; its async lock is what makes fetches single-flight.
#[derive(Debug)]
struct Entry<V, E> {
    /// Fetches completed so far: a caller that saw `n` before it waited, and finds a failure
    /// numbered after `n`, waited for that failed fetch.
    fetches: AtomicU64,
    slot: tokio::sync::Mutex<Slot<V, E>>,
}

/// A single-flight cache from `K` to `V`.
#[derive(Debug)]
pub struct Cache<K, V, E> {
    entries: Mutex<HashMap<K, Arc<Entry<V, E>>>>,
}

impl<K, V, E> Default for Cache<K, V, E> {
    fn default() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> Cache<K, V, E> {
    fn entry(&self, key: &K) -> Arc<Entry<V, E>> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    fetches: AtomicU64::new(0),
                    slot: tokio::sync::Mutex::new(Slot {
                        value: None,
                        failure: None,
                    }),
                })
            })
            .clone()
    }

    /// The cached value for `key` if it is not due for refresh; otherwise the result of `fetch`,
    /// which returns the value and when to fetch it again. A caller that waited for a fetch that
    /// failed gets its error without fetching again.
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Timestamp), E>>,
    {
        let entry = self.entry(key);
        let seen = entry.fetches.load(Ordering::Acquire);
        let mut slot = entry.slot.lock().await;
        if let Some((value, refresh_at)) = &slot.value
            && Timestamp::now() < *refresh_at
        {
            return Ok(value.clone());
        }
        if let Some((n, error)) = &slot.failure
            && *n > seen
        {
            return Err(error.clone());
        }
        let result = fetch().await;
        let n = entry.fetches.fetch_add(1, Ordering::AcqRel) + 1;
        match result {
            Ok((value, refresh_at)) => {
                slot.value = Some((value.clone(), refresh_at));
                slot.failure = None;
                Ok(value)
            }
            Err(e) => {
                slot.failure = Some((n, e.clone()));
                Err(e)
            }
        }
    }

    /// Forgets the entry of `key`, so the next call fetches.
    pub fn invalidate(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

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
    async fn a_failure_is_shared_by_the_callers_waiting_for_it_and_only_by_them() {
        let cache: Arc<Cache<&str, u32, String>> = Arc::default();
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
        // A caller that comes afterwards fetches again: when to retry is the caller's decision.
        let v = cache
            .get(&"k", || async {
                Ok((1, Timestamp::now() + SignedDuration::from_secs(60)))
            })
            .await;
        assert_eq!(v, Ok(1));
        let again = cache
            .get(&"k", || async { Err("not called".to_owned()) })
            .await;
        assert_eq!(again, Ok(1));
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
