//! Keeps the service maps equal to the Services and EndpointSlices in the
//! API: both are watched, every change marks its Service dirty, and dirty
//! Services are reprogrammed in batches (each write touching only what
//! differs). Nothing is written before both lists are complete, so a
//! restarting agent never empties a service it simply has not seen yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kit::watch::{Change, Store};
use kube::api::Api;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::model::{self, Desired, Frontend};
use super::table::{Maps, Table};
use crate::dns;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A namespaced name.
type Ref = (String, String);

// Services are the larger objects; events are moved once each, so the
// difference in size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Event {
    Service(Result<watcher::Event<Service>, watcher::Error>),
    Slice(Result<watcher::Event<EndpointSlice>, watcher::Error>),
}

/// The API objects the load balancer follows, and what it made of them.
struct State<M: Maps> {
    node: String,
    /// The node's address, where node ports are served.
    node_ip: Ipv4Addr,
    table: Table<M>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// The names of the EndpointSlices of each Service.
    slices_of: BTreeMap<Ref, BTreeSet<String>>,
    /// The frontends each Service has programmed.
    owned: BTreeMap<Ref, Vec<Frontend>>,
    owner: HashMap<Frontend, Ref>,
    dirty: BTreeSet<Ref>,
    /// Services whose last write failed, tried again shortly.
    retry: BTreeSet<Ref>,
    /// A complete list arrived since the last prune of unknown frontends.
    prune: bool,
    /// Frontends the agent serves itself (the cluster DNS), whatever a
    /// Service says.
    local: BTreeMap<Frontend, Desired>,
    /// The cluster DNS names, kept with the maps.
    zone: Option<dns::SharedZone>,
}

/// The owner recorded for the agent's own frontends.
fn local_owner() -> Ref {
    (String::new(), "(agent)".into())
}

fn owner_of(slice: &EndpointSlice) -> Option<Ref> {
    let svc = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some((slice.namespace().unwrap_or_default(), svc.clone()))
}

/// Runs until the watch streams end (never, in practice). `local` are
/// frontends the agent serves itself; `zone`, when given, is kept equal to
/// the Services for DNS.
pub async fn run<M: Maps>(
    client: kube::Client,
    node: String,
    node_ip: Ipv4Addr,
    table: Table<M>,
    local: Vec<(Frontend, Desired)>,
    zone: Option<dns::SharedZone>,
) {
    let services = kit::watch::events(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(Event::Service);
    let slices = kit::watch::events(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .map(Event::Slice);
    let mut events = std::pin::pin!(futures::stream::select(services, slices));
    let mut state = State {
        node,
        node_ip,
        table,
        services: Store::default(),
        slices: Store::default(),
        slices_of: BTreeMap::new(),
        owned: BTreeMap::new(),
        owner: HashMap::new(),
        dirty: BTreeSet::new(),
        retry: BTreeSet::new(),
        prune: false,
        local: local.into_iter().collect(),
        zone,
    };
    state.program_local();
    loop {
        let wait = if state.retry.is_empty() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(2)
        };
        match tokio::time::timeout(wait, events.next()).await {
            Ok(None) => return,
            Ok(Some(ev)) => state.handle(ev),
            Err(_) => {
                let retry = std::mem::take(&mut state.retry);
                state.dirty.extend(retry);
            }
        }
        // Take whatever else already arrived, so a burst of changes is
        // written as one batch.
        for _ in 0..4096 {
            match events.next().now_or_never() {
                Some(Some(ev)) => state.handle(ev),
                Some(None) => return,
                None => break,
            }
        }
        state.sync();
    }
}

impl<M: Maps> State<M> {
    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Service(Err(e)) | Event::Slice(Err(e)) => {
                tracing::debug!("watching services and endpoint slices: {e}")
            }
            Event::Service(Ok(ev)) => self.service_event(ev),
            Event::Slice(Ok(ev)) => self.slice_event(ev),
        }
    }

    fn service_event(&mut self, ev: watcher::Event<Service>) {
        self.prune |= matches!(ev, watcher::Event::InitDone);
        for Change { key, .. } in self.services.apply(ev, Some) {
            self.dirty.insert(key);
        }
    }

    fn slice_event(&mut self, ev: watcher::Event<EndpointSlice>) {
        self.prune |= matches!(ev, watcher::Event::InitDone);
        for change in self.slices.apply(ev, Some) {
            self.slice_changed(change);
        }
    }

    /// Moves a changed slice to the Service it belongs to now, and marks
    /// both the Service it left and the one it joined.
    fn slice_changed(&mut self, Change { key, old }: Change<EndpointSlice>) {
        if let Some(owner) = old.as_ref().and_then(owner_of) {
            if let Some(names) = self.slices_of.get_mut(&owner) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices_of.remove(&owner);
                }
            }
            self.dirty.insert(owner);
        }
        if let Some(owner) = self.slices.get(&key).and_then(owner_of) {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.1);
            self.dirty.insert(owner);
        }
    }

    /// Programs the agent's own frontends: they need no API object, so
    /// they work before the first list (and while the API is away).
    fn program_local(&mut self) {
        let local: Vec<(Frontend, Desired)> =
            self.local.iter().map(|(f, d)| (*f, d.clone())).collect();
        for (fe, desired) in local {
            self.owner.insert(fe, local_owner());
            if let Err(e) = self.table.apply(&fe, &desired) {
                tracing::warn!("programming {fe}: {e}");
            }
        }
    }

    /// Programs every dirty Service, once both lists are complete.
    fn sync(&mut self) {
        if !self.services.listed() || !self.slices.listed() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let started = std::time::Instant::now();
        let mut changed = 0;
        for r in &dirty {
            changed += self.reconcile(r);
        }
        if self.prune {
            self.prune = false;
            // Frontends an earlier agent programmed for Services that no
            // longer exist.
            let unknown: Vec<Frontend> = self
                .table
                .frontends()
                .filter(|fe| !self.owner.contains_key(fe))
                .copied()
                .collect();
            for fe in unknown {
                match self.table.remove(&fe) {
                    Ok(()) => {
                        changed += 1;
                        tracing::info!("service frontend {fe}: removed (its Service is gone)");
                    }
                    Err(e) => tracing::warn!("removing service frontend {fe}: {e}"),
                }
            }
        }
        if changed > 0 {
            tracing::info!(
                services = dirty.len(),
                frontends_changed = changed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "service maps updated"
            );
        }
    }

    /// Programs one Service's frontends and removes those it no longer
    /// has. Returns how many frontends changed.
    fn reconcile(&mut self, r: &Ref) -> usize {
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(r)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(r.0.clone(), name.clone())))
            .collect();
        let want = match self.services.get(r) {
            Some(svc) => model::frontends(
                svc,
                slices.iter().copied(),
                model::Here {
                    name: &self.node,
                    ip: self.node_ip,
                },
            ),
            None => Vec::new(),
        };
        if let Some(zone) = &self.zone {
            let record = self
                .services
                .get(r)
                .map(|svc| dns::zone::record(svc, slices.iter().copied()));
            // See dns::handle on why a poisoned lock is still usable.
            zone.write()
                .unwrap_or_else(|p| p.into_inner())
                .set(&r.0, &r.1, record);
        }
        let before = self.owned.remove(r).unwrap_or_default();
        let mut now = Vec::new();
        let mut changed = 0;
        let mut failed = false;
        for (fe, desired) in &want {
            if self.local.contains_key(fe) {
                // The agent serves this address itself (a kube-dns
                // Service holding the cluster DNS address, typically).
                continue;
            }
            if let Some(other) = self.owner.get(fe) {
                if other != r && self.services.contains_key(other) {
                    tracing::warn!(
                        "service {}/{} and {}/{} both claim {fe}; keeping the first",
                        other.0,
                        other.1,
                        r.0,
                        r.1
                    );
                    continue;
                }
            }
            self.owner.insert(*fe, r.clone());
            now.push(*fe);
            match self.table.apply(fe, desired) {
                Ok(true) => {
                    changed += 1;
                    tracing::debug!(
                        "service {}/{} {fe}: {} ready, {} draining",
                        r.0,
                        r.1,
                        desired.active.len(),
                        desired.draining.len()
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("programming service {}/{} {fe}: {e}", r.0, r.1);
                    failed = true;
                }
            }
        }
        let gone: Vec<Frontend> = before.into_iter().filter(|fe| !now.contains(fe)).collect();
        for fe in &gone {
            if self.owner.get(fe) != Some(r) {
                continue;
            }
            match self.table.remove(fe) {
                Ok(()) => {
                    self.owner.remove(fe);
                    changed += 1;
                }
                Err(e) => {
                    tracing::warn!("removing service frontend {fe}: {e}");
                    // Still ours: the retry removes it.
                    now.push(*fe);
                    failed = true;
                }
            }
        }
        if !now.is_empty() {
            self.owned.insert(r.clone(), now);
        }
        if failed {
            self.retry.insert(r.clone());
        }
        changed
    }
}
