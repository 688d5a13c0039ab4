//! The namespaces waiting to be reconciled. Like client-go's workqueue: a namespace is queued at
//! most once, handled by one worker at a time (queued again while a worker has it, it is handled
//! once more afterwards), and may wait for a given instant (retries, spread refreshes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Arc<str>>,
    /// In `ready`.
    queued: HashSet<Arc<str>>,
    /// With a worker now.
    active: HashSet<Arc<str>>,
    /// Queued again while active.
    again: HashSet<Arc<str>>,
    /// Waiting for an instant; the earliest wins.
    delayed: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    due: HashMap<Arc<str>, Instant>,
}

impl State {
    fn add(&mut self, ns: Arc<str>) -> bool {
        self.due.remove(&ns);
        if self.active.contains(&ns) {
            self.again.insert(ns);
            return false;
        }
        if self.queued.insert(ns.clone()) {
            self.ready.push_back(ns);
            return true;
        }
        false
    }

    fn promote(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(Reverse((at, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, ns))) = self.delayed.pop() else {
                break;
            };
            // Only the entry that is still current (a later add_after may have moved it).
            if self.due.get(&ns) == Some(&at) && self.add(ns) {
                n += 1;
            }
        }
        n
    }

    fn earliest(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((at, _))| *at)
    }
}

/// A queue of namespace names.
#[derive(Debug, Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    wake: Notify,
}

impl WorkQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `ns` now.
    pub fn add(&self, ns: Arc<str>) {
        if self.state().add(ns) {
            self.wake.notify_one();
        }
    }

    /// Queues `ns` at `at`, unless it is queued (or due) earlier already.
    pub fn add_at(&self, ns: Arc<str>, at: Instant) {
        let mut s = self.state();
        if s.queued.contains(&ns) || s.due.get(&ns).is_some_and(|d| *d <= at) {
            return;
        }
        s.due.insert(ns.clone(), at);
        s.delayed.push(Reverse((at, ns)));
        drop(s);
        // A waiting worker may need to wake earlier than it planned.
        self.wake.notify_one();
    }

    /// The next namespace to handle; call [`WorkQueue::done`] when finished with it.
    pub async fn next(&self) -> Arc<str> {
        loop {
            let wake = self.wake.notified();
            let mut wake = std::pin::pin!(wake);
            wake.as_mut().enable();
            let earliest = {
                let mut s = self.state();
                if s.promote(Instant::now()) > 1 {
                    // More than this worker can take: wake another.
                    self.wake.notify_one();
                }
                if let Some(ns) = s.ready.pop_front() {
                    s.queued.remove(&ns);
                    s.active.insert(ns.clone());
                    if !s.ready.is_empty() {
                        self.wake.notify_one();
                    }
                    return ns;
                }
                s.earliest()
            };
            match earliest {
                Some(at) => {
                    tokio::select! {
                        _ = &mut wake => {},
                        _ = tokio::time::sleep_until(at) => {},
                    }
                }
                None => wake.await,
            }
        }
    }

    /// A worker is finished with `ns`; if it was queued meanwhile, it is queued again.
    pub fn done(&self, ns: &Arc<str>) {
        let mut s = self.state();
        s.active.remove(ns);
        if s.again.remove(ns) && s.add(ns.clone()) {
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Namespaces queued or waiting (not those with a worker).
    pub fn len(&self) -> usize {
        let s = self.state();
        s.queued.len() + s.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ns(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_is_queued_once_and_handled_by_one_worker_at_a_time() {
        let q = WorkQueue::default();
        q.add(ns("a"));
        q.add(ns("b"));
        q.add(ns("a"));
        assert_eq!(q.len(), 2);
        let first = q.next().await;
        assert_eq!(&*first, "a");
        // Queued again while a worker has it: not handed out twice at once...
        q.add(ns("a"));
        assert_eq!(&*q.next().await, "b");
        let none = tokio::time::timeout(Duration::from_secs(1), q.next()).await;
        assert!(none.is_err(), "a is with a worker");
        // ...but once more after it is done.
        q.done(&first);
        assert_eq!(&*q.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_namespaces_come_at_their_time_and_the_earliest_wins() {
        let q = WorkQueue::default();
        let t0 = Instant::now();
        q.add_at(ns("late"), t0 + Duration::from_secs(10));
        q.add_at(ns("soon"), t0 + Duration::from_secs(2));
        q.add_at(ns("late"), t0 + Duration::from_secs(5));
        // A later instant does not postpone an earlier one.
        q.add_at(ns("soon"), t0 + Duration::from_secs(30));
        let a = q.next().await;
        assert_eq!((&*a, t0.elapsed().as_secs()), ("soon", 2));
        let b = q.next().await;
        assert_eq!((&*b, t0.elapsed().as_secs()), ("late", 5));
        q.done(&a);
        q.done(&b);
        // Nothing else comes from the stale heap entries.
        let none = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(none.is_err());
        // An immediate add overrides a wait.
        q.add_at(ns("x"), Instant::now() + Duration::from_secs(100));
        q.add(ns("x"));
        let started = Instant::now();
        assert_eq!(&*q.next().await, "x");
        assert_eq!(started.elapsed().as_secs(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn many_workers_drain_the_queue() {
        let q = Arc::new(WorkQueue::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (q, seen) = (q.clone(), seen.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let n = q.next().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(n.clone());
                    q.done(&n);
                }
            }));
        }
        for i in 0..100 {
            q.add(ns(&format!("n{i}")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut got = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 100);
        for w in workers {
            w.abort();
        }
    }
}
