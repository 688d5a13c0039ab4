//! Spreading a refresh. When the passwords of 10,000 namespaces are renewed, the writes must come
//! as a steady stream, never as a spike, and still all land before the refresh point. The new
//! password is fetched a window ahead of the refresh point ([`crate::timing`] decides when, and
//! how long the window is), and the namespaces are written at evenly spaced instants across that
//! window. A pure function of time and counts.

use jiff::{SignedDuration, Timestamp};

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
