//! The scheduling queue: pods wait here until a scheduling attempt. Those
//! that did not fit park as unschedulable until the cluster changes (or a
//! minute passes); those whose binding failed back off exponentially.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// How long an unschedulable pod waits without any cluster change.
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
}

/// A queued pod.
pub struct Entry {
    pub pod: Arc<Pod>,
    pub attempts: u32,
    /// When the scheduler first saw the pod pending, for latency metrics.
    pub first_seen: Instant,
    /// The last FailedScheduling message and when it was recorded.
    pub last_failure: Option<(String, Instant)>,
    state: State,
}

/// initial * 2^(attempts-1), capped.
fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (initial * (1u32 << shift)).min(max)
}

pub struct Queue {
    active: VecDeque<String>,
    entries: HashMap<String, Entry>,
    waiting: HashSet<String>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Queue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            active: VecDeque::new(),
            entries: HashMap::new(),
            waiting: HashSet::new(),
            initial_backoff,
            max_backoff,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    fn backoff(&self, attempts: u32) -> Duration {
        backoff(self.initial_backoff, self.max_backoff, attempts)
    }

    /// Adds a pending pod or refreshes it. An unschedulable pod whose spec
    /// or labels changed is tried again at once.
    pub fn upsert(&mut self, key: &str, pod: Pod) {
        match self.entries.get_mut(key) {
            Some(e) => {
                let relevant =
                    e.pod.spec != pod.spec || e.pod.metadata.labels != pod.metadata.labels;
                e.pod = Arc::new(pod);
                if relevant && matches!(e.state, State::Unschedulable(_)) {
                    e.state = State::Active;
                    self.waiting.remove(key);
                    self.active.push_back(key.to_string());
                }
            }
            None => {
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        pod: Arc::new(pod),
                        attempts: 0,
                        first_seen: Instant::now(),
                        last_failure: None,
                        state: State::Active,
                    },
                );
                self.active.push_back(key.to_string());
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        self.waiting.remove(key);
        // A stale key left in `active` is skipped by `pop`.
        self.entries.remove(key)
    }

    /// The next pod to try; it stays queued until `remove`, `unschedulable`
    /// or `retry_later`.
    pub fn pop(&mut self) -> Option<(String, Arc<Pod>)> {
        while let Some(key) = self.active.pop_front() {
            if let Some(e) = self.entries.get_mut(&key) {
                if e.state == State::Active {
                    e.attempts += 1;
                    // Marked so a duplicate key in `active` is skipped.
                    e.state = State::Backoff(Instant::now() + Duration::from_secs(3600));
                    return Some((key, e.pod.clone()));
                }
            }
        }
        None
    }

    pub fn entry_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.entries.get_mut(key)
    }

    /// The pod fit nowhere: park it until the cluster changes.
    pub fn unschedulable(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.state = State::Unschedulable(Instant::now());
            self.waiting.insert(key.to_string());
        }
    }

    /// Something went wrong (a failed binding): try again after a backoff.
    pub fn retry_later(&mut self, key: &str, pod: Arc<Pod>) {
        let attempts = self.entries.get(key).map(|e| e.attempts).unwrap_or(1);
        let backoff = self.backoff(attempts);
        let e = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Entry {
                pod: pod.clone(),
                attempts,
                first_seen: Instant::now(),
                last_failure: None,
                state: State::Active,
            });
        e.pod = pod;
        e.state = State::Backoff(Instant::now() + backoff);
        self.waiting.insert(key.to_string());
    }

    /// A node or pod changed: unschedulable pods get another try once their
    /// backoff has passed.
    pub fn cluster_changed(&mut self) {
        for key in &self.waiting {
            if let Some(e) = self.entries.get_mut(key) {
                if let State::Unschedulable(since) = e.state {
                    let wait = backoff(self.initial_backoff, self.max_backoff, e.attempts);
                    e.state = State::Backoff(since + wait);
                }
            }
        }
    }

    /// Moves due pods to the active queue; returns when the next one is due.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for key in &self.waiting {
            let Some(e) = self.entries.get(key) else {
                due.push((key.clone(), false));
                continue;
            };
            let at = match e.state {
                State::Backoff(at) => at,
                State::Unschedulable(since) => since + UNSCHEDULABLE_FLUSH,
                State::Active => now,
            };
            if at <= now {
                due.push((key.clone(), true));
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for (key, present) in due {
            self.waiting.remove(&key);
            if present {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.state = State::Active;
                }
                self.active.push_back(key);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_then_back_off() {
        let mut q = Queue::new(Duration::from_millis(10), Duration::from_millis(100));
        q.upsert("ns/a", pod("a"));
        let (k, _) = q.pop().unwrap();
        q.unschedulable(&k);
        assert!(q.pop().is_none(), "parked until something changes");
        q.tick(Instant::now());
        assert!(q.pop().is_none(), "a tick alone does not wake it");
        q.cluster_changed();
        std::thread::sleep(Duration::from_millis(20));
        q.tick(Instant::now());
        assert_eq!(q.pop().map(|(k, _)| k).as_deref(), Some("ns/a"));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn removed_pods_are_never_popped() {
        let mut q = Queue::new(Duration::from_millis(10), Duration::from_millis(100));
        q.upsert("ns/a", pod("a"));
        q.upsert("ns/b", pod("b"));
        q.remove("ns/a");
        assert_eq!(q.pop().map(|(k, _)| k).as_deref(), Some("ns/b"));
        assert!(q.pop().is_none());
    }
}
