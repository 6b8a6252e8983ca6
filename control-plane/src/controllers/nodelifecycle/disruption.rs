//! The disruption brake and the eviction rate limits of node lifecycle.
//!
//! Nodes are grouped into zones by `topology.kubernetes.io/zone` (nodes
//! without it form one zone). A zone whose nodes are all NotReady is in full
//! disruption; when every zone is, the likelier cause is this controller
//! being cut off from the nodes (or the API server from etcd), not every
//! machine dying at once, so nothing is evicted until some node is Ready
//! again. Otherwise nodes are tainted for eviction at a limited rate per
//! zone: the primary rate normally, the secondary rate when a large zone is
//! partly disrupted, and not at all when a small one is, so a failing rack
//! or network does not drain a zone in one sweep.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The label that places a node in a zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Health of one zone, as Kubernetes' node lifecycle controller names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    /// At least the unhealthy-zone threshold of its nodes (and more than
    /// two) are NotReady.
    PartialDisruption,
    /// None of its nodes is Ready.
    FullDisruption,
}

/// The eviction flags of the controller-manager.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Nodes tainted for eviction per second in a healthy zone.
    pub eviction_rate: f64,
    /// The same in a partly disrupted zone larger than `large_cluster_size`.
    pub secondary_eviction_rate: f64,
    /// Fraction of NotReady nodes from which a zone is partly disrupted.
    pub unhealthy_zone_threshold: f64,
    /// Zones of at most this many nodes stop evicting when partly disrupted.
    pub large_cluster_size: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            unhealthy_zone_threshold: 0.55,
            large_cluster_size: 50,
        }
    }
}

/// The zone a node with `labels` belongs to ("" without the label).
pub fn zone_of(labels: &BTreeMap<String, String>) -> &str {
    labels.get(ZONE_LABEL).map(String::as_str).unwrap_or("")
}

/// The state of a zone with `ready` and `not_ready` nodes.
pub fn zone_state(ready: usize, not_ready: usize, threshold: f64) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready + not_ready) as f64 >= threshold {
        // More than two, so one or two lost nodes in a tiny zone do not
        // stop its evictions.
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

impl Policy {
    /// Nodes per second a zone of `size` nodes in `state` may have tainted
    /// for eviction, while not every zone is fully disrupted.
    pub fn rate(&self, state: ZoneState, size: usize) -> f64 {
        match state {
            // A fully disrupted zone among healthy ones is a real outage:
            // its pods are better off elsewhere.
            ZoneState::Normal | ZoneState::FullDisruption => self.eviction_rate,
            ZoneState::PartialDisruption if size <= self.large_cluster_size => 0.0,
            ZoneState::PartialDisruption => self.secondary_eviction_rate,
        }
    }
}

/// A token bucket holding at most one token, so evictions never come in a
/// burst: after a quiet spell one node goes at once and the next a full
/// interval later. At rate zero it holds none, so a zone that was stopped
/// waits an interval once it may evict again.
#[derive(Clone, Debug)]
pub struct Limiter {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(rate: f64, now: Instant) -> Self {
        let rate = rate.max(0.0);
        Limiter {
            rate,
            tokens: if rate > 0.0 { 1.0 } else { 0.0 },
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        self.at = now;
    }

    /// Changes the rate from `now` on; what accrued at the old rate is kept.
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(0.0);
        if self.rate == 0.0 {
            self.tokens = 0.0;
        }
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What changed in one observation of the nodes.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Zones whose state changed, with the new state.
    pub zones: Vec<(String, ZoneState)>,
    /// `Some(true)` when every zone just became fully disrupted (the brake
    /// engages), `Some(false)` when one just recovered (it releases).
    pub brake: Option<bool>,
}

struct Zone {
    state: ZoneState,
    size: usize,
    limiter: Limiter,
}

/// Zone states and their limiters across observations.
pub struct Disruption {
    policy: Policy,
    zones: HashMap<String, Zone>,
    braked: bool,
}

impl Disruption {
    pub fn new(policy: Policy) -> Self {
        Disruption {
            policy,
            zones: HashMap::new(),
            braked: false,
        }
    }

    /// Takes in every node's zone and readiness at `now`, updates the
    /// zones and their rates, and says what changed.
    pub fn observe<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (&'a str, bool)>,
        now: Instant,
    ) -> Changes {
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for (zone, ready) in nodes {
            let c = counts.entry(zone).or_default();
            if ready {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        let mut changes = Changes::default();
        self.zones.retain(|z, _| counts.contains_key(z.as_str()));
        for (zone, (ready, not_ready)) in &counts {
            let state = zone_state(*ready, *not_ready, self.policy.unhealthy_zone_threshold);
            let size = ready + not_ready;
            let rate = self.policy.rate(state, size);
            let z = self.zones.entry(zone.to_string()).or_insert_with(|| {
                changes.zones.push((zone.to_string(), state));
                Zone {
                    state,
                    size,
                    limiter: Limiter::new(rate, now),
                }
            });
            if z.state != state {
                changes.zones.push((zone.to_string(), state));
            }
            z.state = state;
            z.size = size;
        }
        changes.zones.sort_by(|a, b| a.0.cmp(&b.0));
        let all_full = !self.zones.is_empty()
            && self
                .zones
                .values()
                .all(|z| z.state == ZoneState::FullDisruption);
        if all_full != self.braked {
            self.braked = all_full;
            changes.brake = Some(all_full);
        }
        for z in self.zones.values_mut() {
            let rate = if self.braked {
                0.0
            } else {
                self.policy.rate(z.state, z.size)
            };
            z.limiter.set_rate(rate, now);
        }
        changes
    }

    /// True while every zone is fully disrupted and nothing is evicted.
    pub fn braked(&self) -> bool {
        self.braked
    }

    /// May a node of `zone` be tainted for eviction now? Takes the zone's
    /// token when it may.
    pub fn admit(&mut self, zone: &str, now: Instant) -> bool {
        if self.braked {
            return false;
        }
        self.zones
            .get_mut(zone)
            .is_some_and(|z| z.limiter.try_take(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: f64 = 0.55;

    #[test]
    fn zone_states() {
        assert_eq!(zone_state(3, 0, T), ZoneState::Normal);
        assert_eq!(zone_state(0, 0, T), ZoneState::Normal);
        assert_eq!(zone_state(0, 1, T), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 5, T), ZoneState::FullDisruption);
        // Two of three lost is a small zone's bad luck, not a disruption.
        assert_eq!(zone_state(1, 2, T), ZoneState::Normal);
        assert_eq!(zone_state(2, 3, T), ZoneState::PartialDisruption);
        assert_eq!(zone_state(45, 55, T), ZoneState::PartialDisruption);
        assert_eq!(zone_state(46, 54, T), ZoneState::Normal);
    }

    #[test]
    fn rates_follow_state_and_size() {
        let p = Policy::default();
        assert_eq!(p.rate(ZoneState::Normal, 10), 0.1);
        assert_eq!(p.rate(ZoneState::FullDisruption, 10), 0.1);
        assert_eq!(p.rate(ZoneState::PartialDisruption, 50), 0.0);
        assert_eq!(p.rate(ZoneState::PartialDisruption, 51), 0.01);
    }

    #[test]
    fn limiter_spaces_evictions_and_never_bursts() {
        let t0 = Instant::now();
        let mut l = Limiter::new(0.1, t0);
        assert!(l.try_take(t0));
        assert!(!l.try_take(t0));
        assert!(!l.try_take(t0 + Duration::from_secs(9)));
        assert!(l.try_take(t0 + Duration::from_secs(10)));
        // A long quiet spell buys one eviction, not a backlog.
        let later = t0 + Duration::from_secs(1000);
        assert!(l.try_take(later));
        assert!(!l.try_take(later));
        assert!(!l.try_take(later + Duration::from_secs(5)));
    }

    #[test]
    fn limiter_at_rate_zero_admits_nothing() {
        let t0 = Instant::now();
        let mut l = Limiter::new(0.1, t0);
        assert!(l.try_take(t0));
        l.set_rate(0.0, t0);
        assert!(!l.try_take(t0 + Duration::from_secs(3600)));
        l.set_rate(0.1, t0 + Duration::from_secs(3600));
        assert!(!l.try_take(t0 + Duration::from_secs(3601)));
        assert!(l.try_take(t0 + Duration::from_secs(3610)));
    }

    fn observe(d: &mut Disruption, nodes: &[(&str, bool)], now: Instant) -> Changes {
        d.observe(nodes.iter().copied(), now)
    }

    #[test]
    fn every_zone_down_brakes_and_one_ready_node_releases() {
        let t0 = Instant::now();
        let mut d = Disruption::new(Policy::default());
        let healthy = [("a", true), ("a", true), ("b", true)];
        let c = observe(&mut d, &healthy, t0);
        assert_eq!(c.brake, None);
        assert_eq!(
            c.zones,
            vec![
                ("a".into(), ZoneState::Normal),
                ("b".into(), ZoneState::Normal)
            ]
        );
        // Zone b alone goes down: a real outage, evicted at the normal rate.
        let c = observe(&mut d, &[("a", true), ("a", true), ("b", false)], t0);
        assert_eq!(c.zones, vec![("b".into(), ZoneState::FullDisruption)]);
        assert_eq!(c.brake, None);
        assert!(d.admit("b", t0));
        assert!(!d.admit("b", t0 + Duration::from_secs(1)));
        // Then everything: the brake engages and nothing is admitted, however long.
        let down = [("a", false), ("a", false), ("b", false)];
        let c = observe(&mut d, &down, t0 + Duration::from_secs(2));
        assert_eq!(c.brake, Some(true));
        assert!(d.braked());
        let t1 = t0 + Duration::from_secs(600);
        assert_eq!(observe(&mut d, &down, t1).brake, None);
        assert!(!d.admit("a", t1));
        assert!(!d.admit("b", t1));
        // One node back: released, and evictions resume one interval
        // later, one node at a time.
        let c = observe(&mut d, &[("a", true), ("a", false), ("b", false)], t1);
        assert_eq!(c.brake, Some(false));
        assert!(!d.braked());
        assert!(!d.admit("a", t1));
        assert!(!d.admit("a", t1 + Duration::from_secs(5)));
        assert!(d.admit("a", t1 + Duration::from_secs(10)));
        assert!(!d.admit("a", t1 + Duration::from_secs(15)));
        assert!(d.admit("b", t1 + Duration::from_secs(10)));
        assert!(!d.admit("b", t1 + Duration::from_secs(10)));
    }

    #[test]
    fn nodes_without_a_zone_form_one_zone() {
        let t0 = Instant::now();
        let mut d = Disruption::new(Policy::default());
        let c = observe(&mut d, &[("", false), ("", false)], t0);
        assert_eq!(c.brake, Some(true));
        assert!(!d.admit("", t0));
        let labels: BTreeMap<String, String> =
            [(ZONE_LABEL.to_string(), "eu-1a".to_string())].into();
        assert_eq!(zone_of(&labels), "eu-1a");
        assert_eq!(zone_of(&BTreeMap::new()), "");
    }

    #[test]
    fn partial_disruption_slows_large_zones_and_stops_small_ones() {
        let t0 = Instant::now();
        let mut nodes: Vec<(&str, bool)> = vec![("small", false); 3];
        nodes.push(("small", true));
        nodes.extend(std::iter::repeat_n(("large", false), 60));
        nodes.extend(std::iter::repeat_n(("large", true), 40));
        let mut d = Disruption::new(Policy::default());
        let c = observe(&mut d, &nodes, t0);
        assert_eq!(
            c.zones,
            vec![
                ("large".into(), ZoneState::PartialDisruption),
                ("small".into(), ZoneState::PartialDisruption)
            ]
        );
        // The small zone evicts nothing, ever; the large one at 0.01/s.
        assert!(!d.admit("small", t0));
        assert!(!d.admit("small", t0 + Duration::from_secs(3600)));
        assert!(d.admit("large", t0));
        assert!(!d.admit("large", t0 + Duration::from_secs(99)));
        assert!(d.admit("large", t0 + Duration::from_secs(100)));
    }
}
