//! The agent's side of the service maps: what each frontend holds in the
//! kernel, and the order changes are written in so that a program reading
//! concurrently never meets half a service.
//!
//! The rules, for a frontend going from one set of backends to another:
//! 1. new backends are written (and ones becoming ready marked active);
//! 2. slots 1..=n are written;
//! 3. slot 0 (the count) is written;
//! 4. slots beyond the new count are removed;
//! 5. backends leaving are marked inactive or removed.
//!
//! After every single write, each slot below the visible count names a
//! backend that exists and belongs to the frontend. Removing a frontend
//! goes the other way: slot 0 first, backends last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::ebpf::abi::{self, Backend, ServiceKey, ServiceValue};
use crate::ebpf::Error;

use super::model::{Desired, Frontend, Proto, Target};

/// The two maps the agent writes, as key/value operations (the kernel's
/// pinned maps, or a recording fake in tests).
pub trait Maps {
    fn put_row(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error>;
    /// Removes a row; a missing one is not an error.
    fn del_row(&mut self, key: ServiceKey) -> Result<(), Error>;
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), Error>;
    /// Removes a backend; a missing one is not an error.
    fn del_backend(&mut self, id: u32) -> Result<(), Error>;
    /// Every row, for adopting what an earlier agent wrote.
    fn rows(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error>;
    /// Every backend.
    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error>;
}

/// One frontend as it is in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Programmed {
    id: u32,
    /// Slot 0 as written, None when it is not (yet, or any more).
    head: Option<ServiceValue>,
    /// Backend ids of slots 1..=len.
    slots: Vec<u32>,
    /// Backends by address: (id, active).
    backends: BTreeMap<Target, (u32, bool)>,
}

/// The frontends this agent programs, mirrored from the kernel.
pub struct Table<M: Maps> {
    maps: M,
    frontends: BTreeMap<Frontend, Programmed>,
    used_service_ids: BTreeSet<u32>,
    used_backend_ids: BTreeSet<u32>,
    next_service_id: u32,
    next_backend_id: u32,
}

/// Frontend to map key for `slot`.
pub fn key(fe: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        vip: u32::from_ne_bytes(fe.vip.octets()),
        port: fe.port.to_be(),
        slot,
        proto: fe.proto.number(),
        pad: [0; 3],
    }
}

/// Map key to frontend (None for protocols the balancer never writes).
pub fn frontend(k: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        vip: Ipv4Addr::from(k.vip.to_ne_bytes()),
        port: u16::from_be(k.port),
        proto: Proto::from_number(k.proto)?,
    })
}

/// A backend's address as the map holds it.
pub fn target(b: &Backend) -> Target {
    Target {
        ip: Ipv4Addr::from(b.ip.to_ne_bytes()),
        port: u16::from_be(b.port),
    }
}

fn backend_value(fe: &Frontend, t: &Target, service_id: u32, active: bool) -> Backend {
    Backend {
        ip: u32::from_ne_bytes(t.ip.octets()),
        port: t.port.to_be(),
        proto: fe.proto.number(),
        flags: if active { abi::BACKEND_F_ACTIVE } else { 0 },
        service_id,
    }
}

fn next_free(used: &BTreeSet<u32>, next: &mut u32) -> u32 {
    // Id 0 is never handed out, so a zeroed value never names a backend.
    loop {
        let id = *next;
        *next = next.wrapping_add(1).max(1);
        if id != 0 && !used.contains(&id) {
            return id;
        }
    }
}

impl<M: Maps> Table<M> {
    /// Adopts what the maps already hold (pinned by an earlier agent), so a
    /// restart changes only what differs. Backends that no frontend owns
    /// are removed.
    pub fn load(mut maps: M) -> Result<Self, Error> {
        let mut frontends: BTreeMap<Frontend, Programmed> = BTreeMap::new();
        let mut stray_rows = Vec::new();
        let mut slot_rows: Vec<(Frontend, u16, ServiceValue)> = Vec::new();
        for (k, v) in maps.rows()? {
            let Some(fe) = frontend(&k) else {
                stray_rows.push(k);
                continue;
            };
            if k.slot == 0 {
                let p = frontends.entry(fe).or_default();
                p.id = v.service_id;
                p.head = Some(v);
            } else {
                slot_rows.push((fe, k.slot, v));
            }
        }
        slot_rows.sort_by_key(|(fe, slot, _)| (*fe, *slot));
        for (fe, slot, v) in slot_rows {
            let p = frontends.entry(fe).or_default();
            if p.head.is_none() {
                p.id = v.service_id;
            }
            // Rows are contiguous when the agent finished its writes; a
            // gap (an agent killed between two writes) is filled with
            // id 0, which names no backend and is rewritten on the next
            // change.
            while p.slots.len() + 1 < usize::from(slot) {
                p.slots.push(0);
            }
            p.slots.push(v.backend_id);
        }
        let by_service: BTreeMap<u32, Frontend> =
            frontends.iter().map(|(fe, p)| (p.id, *fe)).collect();
        let mut stray_backends = Vec::new();
        for (id, b) in maps.backends()? {
            match by_service
                .get(&b.service_id)
                .and_then(|fe| frontends.get_mut(fe))
            {
                Some(p) => {
                    p.backends
                        .insert(target(&b), (id, b.flags & abi::BACKEND_F_ACTIVE != 0));
                }
                None => stray_backends.push(id),
            }
        }
        for k in stray_rows {
            maps.del_row(k)?;
        }
        for id in stray_backends {
            maps.del_backend(id)?;
        }
        let used_service_ids: BTreeSet<u32> = frontends.values().map(|p| p.id).collect();
        let used_backend_ids: BTreeSet<u32> = frontends
            .values()
            .flat_map(|p| p.backends.values().map(|(id, _)| *id))
            .collect();
        Ok(Self {
            next_service_id: used_service_ids.last().map_or(1, |m| m.wrapping_add(1)),
            next_backend_id: used_backend_ids.last().map_or(1, |m| m.wrapping_add(1)),
            used_service_ids,
            used_backend_ids,
            frontends,
            maps,
        })
    }

    /// The frontends the kernel holds.
    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends.keys()
    }

    /// Makes `fe` balance over `want`. Writes only what differs, in the
    /// order described at the top of this file; returns whether anything
    /// was written.
    pub fn apply(&mut self, fe: &Frontend, want: &Desired) -> Result<bool, Error> {
        let mut p = match self.frontends.remove(fe) {
            Some(p) => p,
            None => {
                let id = next_free(&self.used_service_ids, &mut self.next_service_id);
                self.used_service_ids.insert(id);
                Programmed {
                    id,
                    ..Default::default()
                }
            }
        };
        let before = p.clone();
        // Whatever happens, the mirror keeps what was actually written.
        let result = self.write(fe, want, &mut p);
        let changed = p != before;
        self.frontends.insert(*fe, p);
        result.map(|()| changed)
    }

    fn write(&mut self, fe: &Frontend, want: &Desired, p: &mut Programmed) -> Result<(), Error> {
        let active: BTreeSet<Target> = want.active.iter().copied().collect();
        let keep: BTreeSet<Target> = active.iter().chain(&want.draining).copied().collect();

        // 1. Backends first: a slot may only ever name one that exists.
        for t in &active {
            match p.backends.get(t).copied() {
                Some((_, true)) => {}
                Some((id, false)) => {
                    self.maps
                        .put_backend(id, backend_value(fe, t, p.id, true))?;
                    p.backends.insert(*t, (id, true));
                }
                None => {
                    let id = next_free(&self.used_backend_ids, &mut self.next_backend_id);
                    self.maps
                        .put_backend(id, backend_value(fe, t, p.id, true))?;
                    self.used_backend_ids.insert(id);
                    p.backends.insert(*t, (id, true));
                }
            }
        }
        for t in &want.draining {
            if !p.backends.contains_key(t) {
                // A backend first seen terminating gets an id anyway, so a
                // restarted agent keeps draining it.
                let id = next_free(&self.used_backend_ids, &mut self.next_backend_id);
                self.maps
                    .put_backend(id, backend_value(fe, t, p.id, false))?;
                self.used_backend_ids.insert(id);
                p.backends.insert(*t, (id, false));
            }
        }

        // 2. Slots 1..=n.
        let slots: Vec<u32> = active.iter().map(|t| p.backends[t].0).collect();
        for (i, id) in slots.iter().enumerate() {
            if p.slots.get(i) == Some(id) {
                continue;
            }
            let row = ServiceValue {
                backend_id: *id,
                service_id: p.id,
                ..Default::default()
            };
            self.maps.put_row(key(fe, i as u16 + 1), row)?;
            if i < p.slots.len() {
                p.slots[i] = *id;
            } else {
                p.slots.push(*id);
            }
        }

        // 3. The count, which makes the slots visible.
        let head = ServiceValue {
            backend_id: 0,
            service_id: p.id,
            count: slots.len() as u16,
            flags: if want.affinity_timeout.is_some() {
                abi::SERVICE_F_AFFINITY
            } else {
                0
            },
            affinity_timeout: want.affinity_timeout.unwrap_or(0),
        };
        if p.head != Some(head) {
            self.maps.put_row(key(fe, 0), head)?;
            p.head = Some(head);
        }

        // 4. Slots no reader can reach any more.
        while p.slots.len() > slots.len() {
            self.maps.del_row(key(fe, p.slots.len() as u16))?;
            p.slots.pop();
        }

        // 5. Backends that stopped taking new clients, then those gone.
        let leaving: Vec<(Target, u32, bool)> = p
            .backends
            .iter()
            .filter(|(t, (_, is_active))| !active.contains(t) && (*is_active || !keep.contains(t)))
            .map(|(t, (id, is_active))| (*t, *id, *is_active))
            .collect();
        for (t, id, _) in leaving {
            if keep.contains(&t) {
                self.maps
                    .put_backend(id, backend_value(fe, &t, p.id, false))?;
                p.backends.insert(t, (id, false));
            } else {
                self.maps.del_backend(id)?;
                p.backends.remove(&t);
                self.used_backend_ids.remove(&id);
            }
        }
        Ok(())
    }

    /// Removes frontend `fe`: slot 0 first, so new connections stop finding
    /// it before anything it names goes.
    pub fn remove(&mut self, fe: &Frontend) -> Result<(), Error> {
        let Some(mut p) = self.frontends.remove(fe) else {
            return Ok(());
        };
        let result = self.erase(fe, &mut p);
        if result.is_err() {
            // Keep what is left, so a later call finishes the job.
            self.frontends.insert(*fe, p);
        } else {
            self.used_service_ids.remove(&p.id);
        }
        result
    }

    fn erase(&mut self, fe: &Frontend, p: &mut Programmed) -> Result<(), Error> {
        if p.head.is_some() {
            self.maps.del_row(key(fe, 0))?;
            p.head = None;
        }
        while !p.slots.is_empty() {
            self.maps.del_row(key(fe, p.slots.len() as u16))?;
            p.slots.pop();
        }
        while let Some((t, (id, _))) = p.backends.pop_first() {
            if let Err(e) = self.maps.del_backend(id) {
                p.backends.insert(t, (id, false));
                return Err(e);
            }
            self.used_backend_ids.remove(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The maps as plain collections; after every write it checks what a
    /// concurrent reader relies on.
    #[derive(Default)]
    struct Fake {
        rows: BTreeMap<ServiceKey, ServiceValue>,
        backends: BTreeMap<u32, Backend>,
        writes: usize,
    }

    impl Fake {
        fn check(&self) {
            for (k, v) in self.rows.iter().filter(|(k, _)| k.slot == 0) {
                for slot in 1..=v.count {
                    let row = self
                        .rows
                        .get(&ServiceKey { slot, ..*k })
                        .unwrap_or_else(|| {
                            panic!("write {}: slot {slot} of {k:?} missing", self.writes)
                        });
                    let b = self.backends.get(&row.backend_id).unwrap_or_else(|| {
                        panic!("write {}: slot {slot} names a missing backend", self.writes)
                    });
                    assert_eq!(b.service_id, v.service_id, "write {}", self.writes);
                    assert_eq!(b.flags & abi::BACKEND_F_ACTIVE, abi::BACKEND_F_ACTIVE);
                }
            }
            for (k, v) in self.rows.iter().filter(|(k, _)| k.slot != 0) {
                assert!(
                    self.backends.contains_key(&v.backend_id),
                    "write {}: {k:?} names a missing backend",
                    self.writes
                );
            }
        }
    }

    impl Maps for Fake {
        fn put_row(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error> {
            self.rows.insert(key, value);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn del_row(&mut self, key: ServiceKey) -> Result<(), Error> {
            self.rows.remove(&key);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), Error> {
            self.backends.insert(id, backend);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn del_backend(&mut self, id: u32) -> Result<(), Error> {
            self.backends.remove(&id);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn rows(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
            Ok(self.rows.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn backends(&self) -> Result<Vec<(u32, Backend)>, Error> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }
    }

    fn fe() -> Frontend {
        Frontend {
            vip: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        }
    }

    fn targets(last_octets: &[u8]) -> Vec<Target> {
        last_octets
            .iter()
            .map(|o| Target {
                ip: Ipv4Addr::new(10, 244, 1, *o),
                port: 8080,
            })
            .collect()
    }

    fn want(active: &[u8], draining: &[u8]) -> Desired {
        Desired {
            active: targets(active),
            draining: targets(draining),
            affinity_timeout: None,
        }
    }

    /// The active backends a reader would pick from.
    fn visible(m: &Fake) -> Vec<Target> {
        let head = m.rows.get(&key(&fe(), 0)).unwrap();
        let mut out: Vec<Target> = (1..=head.count)
            .map(|s| target(&m.backends[&m.rows[&key(&fe(), s)].backend_id]))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_write_leaves_a_whole_service_through_growth_shrinking_and_removal() {
        let mut t = Table::load(Fake::default()).unwrap();
        for (active, draining) in [
            (&[2, 3, 4][..], &[][..]),
            (&[2, 3, 4, 5, 6], &[]),
            (&[3, 6], &[2, 4]),
            (&[], &[3]),
            (&[7], &[]),
            (&[7, 8, 9], &[]),
        ] {
            t.apply(&fe(), &want(active, draining)).unwrap();
            let m = &t.maps;
            assert_eq!(visible(m), targets(active), "active {active:?}");
            // Exactly the wanted backends exist; draining ones are inactive.
            let mut present: Vec<(Target, bool)> = m
                .backends
                .values()
                .map(|b| (target(b), b.flags & abi::BACKEND_F_ACTIVE != 0))
                .collect();
            present.sort();
            let mut expected: Vec<(Target, bool)> = targets(active)
                .into_iter()
                .map(|t| (t, true))
                .chain(targets(draining).into_iter().map(|t| (t, false)))
                .collect();
            expected.sort();
            assert_eq!(present, expected);
            assert_eq!(m.rows.len(), active.len() + 1, "no stray slot rows");
        }
        t.remove(&fe()).unwrap();
        assert!(t.maps.rows.is_empty() && t.maps.backends.is_empty());
    }

    #[test]
    fn an_unchanged_service_is_not_rewritten() {
        let mut t = Table::load(Fake::default()).unwrap();
        t.apply(&fe(), &want(&[2, 3], &[])).unwrap();
        let before = t.maps.writes;
        t.apply(&fe(), &want(&[2, 3], &[])).unwrap();
        assert_eq!(t.maps.writes, before);
    }

    #[test]
    fn a_restarted_agent_adopts_the_maps_and_changes_only_the_difference() {
        let mut t = Table::load(Fake::default()).unwrap();
        t.apply(&fe(), &want(&[2, 3, 4], &[])).unwrap();
        let other = Frontend { port: 81, ..fe() };
        t.apply(&other, &want(&[9], &[])).unwrap();
        let ids: Vec<u32> = t.maps.backends.keys().copied().collect();
        // A new agent over the same maps.
        let mut t = Table::load(t.maps).unwrap();
        let before = t.maps.writes;
        t.apply(&fe(), &want(&[2, 3, 4], &[])).unwrap();
        t.apply(&other, &want(&[9], &[])).unwrap();
        assert_eq!(t.maps.writes, before, "nothing to write after adoption");
        assert_eq!(t.maps.backends.keys().copied().collect::<Vec<_>>(), ids);
        // New ids do not collide with adopted ones.
        t.apply(&fe(), &want(&[2, 3, 4, 5], &[])).unwrap();
        assert_eq!(t.maps.backends.len(), 5);
        assert_eq!(visible(&t.maps).len(), 4);
    }

    #[test]
    fn affinity_is_written_in_slot_zero() {
        let mut t = Table::load(Fake::default()).unwrap();
        let mut w = want(&[2], &[]);
        w.affinity_timeout = Some(30);
        t.apply(&fe(), &w).unwrap();
        let head = t.maps.rows[&key(&fe(), 0)];
        assert_eq!(head.flags, abi::SERVICE_F_AFFINITY);
        assert_eq!(head.affinity_timeout, 30);
    }

    #[test]
    fn keys_hold_addresses_as_a_sockaddr_does() {
        let k = key(&fe(), 0);
        assert_eq!(k.vip.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!(k.proto, 6);
        assert_eq!(frontend(&k), Some(fe()));
    }
}
