//! The scheduler: watches pods that no node has yet, picks a node for each
//! (filters, then scores) and binds through `pods/binding`. One task owns
//! the cache and the queue; bindings run concurrently and report back.

pub mod cache;
pub mod plugins;
pub mod queue;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use serde_json::json;

use crate::component::events::{reference, Recorder};
use crate::component::health::Health;
use crate::component::leader::{self, LeaderArgs};
use crate::component::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS};
use crate::component::ClientArgs;
use cache::{Cache, PodInfo};
use plugins::PreFilter;
use queue::Queue;

/// Flags of `control-plane scheduler`.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Where /healthz, /readyz and /metrics are served (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:10259")]
    pub bind_address: SocketAddr,
    /// Pods whose spec.schedulerName is this are ours.
    #[arg(long, default_value = "default-scheduler")]
    pub scheduler_name: String,
    /// Bindings in flight at once.
    #[arg(long, default_value_t = 64)]
    pub parallelism: usize,
    /// Share of nodes to find feasible before scoring (0: adaptive, as
    /// kube-scheduler: 50% minus 1% per 125 nodes, at least 5% and 100 nodes).
    #[arg(long, default_value_t = 0)]
    pub percentage_of_nodes_to_score: u32,
    /// First retry delay after a failed binding (seconds); doubles per attempt.
    #[arg(long, default_value_t = 1)]
    pub pod_initial_backoff_seconds: u64,
    /// Longest retry delay (seconds).
    #[arg(long, default_value_t = 10)]
    pub pod_max_backoff_seconds: u64,
}

/// Runs the scheduler until SIGTERM or loss of leadership.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = config.client.client().await?;
    let health = Health::new();
    let addr = health.serve(config.bind_address).await?;
    tracing::info!("scheduler health and metrics on http://{addr}");
    let leader = config.leader.clone();
    leader::while_leading(client.clone(), "kube-scheduler", &leader, || {
        Scheduler::new(client, config, &health).run()
    })
    .await
}

enum Input {
    Node(Box<watcher::Event<Node>>),
    Pod(Box<watcher::Event<Pod>>),
    /// A claim or volume changed: pods waiting on one may fit now.
    Volumes,
}

struct Bound {
    key: String,
    pod: Arc<Pod>,
    node: String,
    result: Result<(), kube::Error>,
    first_seen: Instant,
}

struct Metrics {
    scheduled: Arc<Counter>,
    unschedulable: Arc<Counter>,
    bind_errors: Arc<Counter>,
    pending: Arc<Gauge>,
    filter: Arc<Histogram>,
    score: Arc<Histogram>,
    bind: Arc<Histogram>,
    e2e: Arc<Histogram>,
}

/// The scheduler's state; `run` drives it.
pub struct Scheduler {
    client: kube::Client,
    config: Config,
    cache: Cache,
    queue: Queue,
    in_flight: HashSet<String>,
    next_start: usize,
    rng: u64,
    recorder: Recorder,
    metrics: Metrics,
    ready: Arc<std::sync::atomic::AtomicBool>,
    binds: Arc<tokio::sync::Semaphore>,
    volumes: Option<volumes::Volumes>,
}

impl Scheduler {
    pub fn new(client: kube::Client, config: Config, health: &Health) -> Self {
        let m = &health.metrics;
        let metrics = Metrics {
            scheduled: m.counter("scheduler_pods_scheduled_total", "Pods bound to a node."),
            unschedulable: m.counter(
                "scheduler_unschedulable_attempts_total",
                "Scheduling attempts that found no feasible node.",
            ),
            bind_errors: m.counter(
                "scheduler_binding_errors_total",
                "Bindings the API refused.",
            ),
            pending: m.gauge("scheduler_pending_pods", "Pods in the scheduling queue."),
            filter: m.histogram(
                "scheduler_filter_duration_seconds",
                "Time spent finding feasible nodes per attempt.",
                LATENCY_BUCKETS,
            ),
            score: m.histogram(
                "scheduler_score_duration_seconds",
                "Time spent scoring feasible nodes per attempt.",
                LATENCY_BUCKETS,
            ),
            bind: m.histogram(
                "scheduler_binding_duration_seconds",
                "Latency of the pods/binding call.",
                LATENCY_BUCKETS,
            ),
            e2e: m.histogram(
                "scheduler_pod_scheduling_duration_seconds",
                "From first seen pending to bound.",
                LATENCY_BUCKETS,
            ),
        };
        let dropped = m.counter(
            "scheduler_events_dropped_total",
            "Events dropped under load.",
        );
        Self {
            recorder: Recorder::new(client.clone(), "default-scheduler", dropped),
            binds: Arc::new(tokio::sync::Semaphore::new(config.parallelism.max(1))),
            queue: Queue::new(
                Duration::from_secs(config.pod_initial_backoff_seconds.max(1)),
                Duration::from_secs(config.pod_max_backoff_seconds.max(1)),
            ),
            client,
            config,
            cache: Cache::default(),
            in_flight: HashSet::new(),
            next_start: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
            metrics,
            ready: health.ready.clone(),
            volumes: None,
        }
    }

    /// Watches, schedules and binds until an error ends the watches.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Input>(8192);
        let vtx = tx.clone();
        self.volumes = Some(volumes::Volumes::new(&self.client, move || {
            // A full channel already carries a change; dropping is fine.
            let _ = vtx.try_send(Input::Volumes);
        }));
        let nodes = watcher(
            Api::<Node>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        let pods = watcher(
            Api::<Pod>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        let ntx = tx.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(nodes);
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(ev) => {
                        if ntx.send(Input::Node(Box::new(ev))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("watching nodes: {e}"),
                }
            }
        });
        tokio::spawn(async move {
            let mut s = std::pin::pin!(pods);
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(ev) => {
                        if tx.send(Input::Pod(Box::new(ev))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("watching pods: {e}"),
                }
            }
        });
        let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<Bound>();
        let mut synced = (false, false);
        let mut relist_nodes: Option<HashSet<String>> = None;
        let mut relist_pods: Option<HashSet<String>> = None;
        loop {
            let ready = synced.0 && synced.1;
            if ready && self.queue.has_active() {
                // Take what the watches and bindings have delivered, then
                // a batch of scheduling, so neither starves the other.
                for _ in 0..4096 {
                    match rx.try_recv() {
                        Ok(i) => self.input(i, &mut synced, &mut relist_nodes, &mut relist_pods),
                        Err(_) => break,
                    }
                }
                while let Ok(b) = bound_rx.try_recv() {
                    self.bound(b);
                }
                for _ in 0..64 {
                    let Some((key, pod)) = self.queue.pop() else {
                        break;
                    };
                    self.schedule_one(key, pod, &bound_tx);
                }
                self.metrics.pending.set(self.queue.len() as u64);
                tokio::task::yield_now().await;
                continue;
            }
            let next = self.queue.tick(Instant::now());
            if self.queue.has_active() && ready {
                continue;
            }
            let wait = next
                .map(|n| n.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                i = rx.recv() => match i {
                    Some(i) => self.input(i, &mut synced, &mut relist_nodes, &mut relist_pods),
                    None => anyhow::bail!("watches ended"),
                },
                Some(b) = bound_rx.recv() => self.bound(b),
                _ = tokio::time::sleep(wait) => {}
            }
            self.ready
                .store(synced.0 && synced.1, std::sync::atomic::Ordering::Relaxed);
            self.metrics.pending.set(self.queue.len() as u64);
        }
    }

    fn input(
        &mut self,
        input: Input,
        synced: &mut (bool, bool),
        relist_nodes: &mut Option<HashSet<String>>,
        relist_pods: &mut Option<HashSet<String>>,
    ) {
        match input {
            Input::Volumes => self.queue.cluster_changed(),
            Input::Node(ev) => match *ev {
                watcher::Event::Init => *relist_nodes = Some(HashSet::new()),
                watcher::Event::InitApply(n) => {
                    if let Some(seen) = relist_nodes.as_mut() {
                        seen.insert(n.metadata.name.clone().unwrap_or_default());
                    }
                    self.cache.upsert_node(&n);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = relist_nodes.take() {
                        let gone: Vec<String> = self
                            .cache
                            .node_names()
                            .filter(|n| !seen.contains(*n))
                            .map(str::to_string)
                            .collect();
                        for n in gone {
                            self.cache.remove_node(&n);
                        }
                    }
                    synced.0 = true;
                    self.queue.cluster_changed();
                }
                watcher::Event::Apply(n) => {
                    self.cache.upsert_node(&n);
                    self.queue.cluster_changed();
                }
                watcher::Event::Delete(n) => {
                    self.cache
                        .remove_node(n.metadata.name.as_deref().unwrap_or_default());
                    self.queue.cluster_changed();
                }
            },
            Input::Pod(ev) => match *ev {
                watcher::Event::Init => *relist_pods = Some(HashSet::new()),
                watcher::Event::InitApply(p) => {
                    if let Some(seen) = relist_pods.as_mut() {
                        seen.insert(pod_key(&p));
                    }
                    self.pod_changed(p);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = relist_pods.take() {
                        // Whatever the relist no longer has was deleted while
                        // the watch was down.
                        let mut gone = Vec::new();
                        for node in &self.cache.nodes {
                            for k in node.pods.keys() {
                                if !seen.contains(k) && !self.cache.assumed.contains(k) {
                                    gone.push(k.clone());
                                }
                            }
                        }
                        for k in gone {
                            self.cache.unplace(&k);
                            self.queue.remove(&k);
                        }
                    }
                    synced.1 = true;
                }
                watcher::Event::Apply(p) => self.pod_changed(p),
                watcher::Event::Delete(p) => {
                    let key = pod_key(&p);
                    self.queue.remove(&key);
                    if self.cache.unplace(&key) {
                        self.cache.assumed.remove(&key);
                        self.queue.cluster_changed();
                    }
                }
            },
        }
    }

    fn pod_changed(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        // Finished pods hold no resources.
        if matches!(phase, Some("Succeeded" | "Failed")) {
            self.queue.remove(&key);
            if self.cache.unplace(&key) {
                self.queue.cluster_changed();
            }
            return;
        }
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if let Some(node) = node {
            self.queue.remove(&key);
            let was_ours = self.cache.assumed.remove(&key);
            let moved = self.cache.node_of(&key) != Some(node.as_str());
            self.cache.place(Arc::new(PodInfo::new(pod)), &node);
            if moved && !was_ours {
                self.queue.cluster_changed();
            }
            return;
        }
        let ours = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler")
            == self.config.scheduler_name;
        if !ours || pod.metadata.deletion_timestamp.is_some() {
            self.queue.remove(&key);
            return;
        }
        if self.in_flight.contains(&key) {
            return;
        }
        self.queue.upsert(&key, pod);
    }

    fn schedule_one(
        &mut self,
        key: String,
        pod: Arc<Pod>,
        bound_tx: &tokio::sync::mpsc::UnboundedSender<Bound>,
    ) {
        let t0 = Instant::now();
        let info = Arc::new(PodInfo::new((*pod).clone()));
        let pre = PreFilter::new(&info, &self.cache);
        let n = self.cache.nodes.len();
        let vols = match self.volumes.as_ref().map(|v| v.prepare(&pod)) {
            Some(Err(reason)) => {
                self.metrics.unschedulable.inc();
                let reasons = HashMap::from([(reason, n.max(1))]);
                self.unschedulable(&key, &pod, plugins::unschedulable_message(n, &reasons));
                return;
            }
            Some(Ok(v)) => v,
            None => volumes::PodVolumes::default(),
        };
        let want = plugins::feasible_nodes_to_find(n, self.config.percentage_of_nodes_to_score);
        let mut feasible = Vec::new();
        let mut reasons: HashMap<String, usize> = HashMap::new();
        let start = if n == 0 { 0 } else { self.next_start % n };
        let mut visited = 0;
        for i in 0..n {
            let idx = (start + i) % n;
            visited += 1;
            let node = &self.cache.nodes[idx];
            match pre.filter(&info, node).and_then(|()| vols.filter(node)) {
                Ok(()) => {
                    feasible.push(idx);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if n > 0 {
            self.next_start = (start + visited) % n;
        }
        let t1 = Instant::now();
        self.metrics.filter.observe(t1 - t0);
        if feasible.is_empty() {
            let message = if n == 0 {
                "no nodes available to schedule pods".to_string()
            } else {
                plugins::unschedulable_message(n, &reasons)
            };
            self.metrics.unschedulable.inc();
            self.unschedulable(&key, &pod, message);
            return;
        }
        let nodes: Vec<_> = feasible.iter().map(|i| &self.cache.nodes[*i]).collect();
        let scores = pre.score(&info, &nodes);
        let best = scores.iter().copied().max().unwrap_or(0);
        // Among equal best scores pick one at random, as kube-scheduler does.
        let mut chosen = 0;
        let mut seen = 0u64;
        let mut rng = self.rng;
        for (i, s) in scores.iter().enumerate() {
            if *s == best {
                seen += 1;
                if xorshift(&mut rng).is_multiple_of(seen) {
                    chosen = i;
                }
            }
        }
        let node = nodes[chosen].name.clone();
        self.rng = rng;
        self.metrics.score.observe(t1.elapsed());

        self.cache.place(info, &node);
        self.cache.assumed.insert(key.clone());
        self.in_flight.insert(key.clone());
        let first_seen = self.queue.remove(&key).map(|e| e.first_seen).unwrap_or(t0);
        let client = self.client.clone();
        let tx = bound_tx.clone();
        let permits = self.binds.clone();
        let bind_metric = self.metrics.bind.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let t = Instant::now();
            // Claims waiting for their first consumer learn the node first,
            // so their volumes are made where the pod will run.
            if let Err(e) = vols.select_node(&client, &ns, &node).await {
                bind_metric.observe(t.elapsed());
                let _ = tx.send(Bound {
                    key,
                    pod,
                    node,
                    result: Err(e),
                    first_seen,
                });
                return;
            }
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let body = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let result = api
                .create_subresource::<serde_json::Value, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &body,
                )
                .await
                .map(|_| ());
            bind_metric.observe(t.elapsed());
            let _ = tx.send(Bound {
                key,
                pod,
                node,
                result,
                first_seen,
            });
        });
    }

    fn bound(&mut self, b: Bound) {
        self.in_flight.remove(&b.key);
        match b.result {
            Ok(()) => {
                self.metrics.scheduled.inc();
                self.metrics.e2e.observe(b.first_seen.elapsed());
                let ns = b.pod.metadata.namespace.as_deref().unwrap_or_default();
                let name = b.pod.metadata.name.as_deref().unwrap_or_default();
                self.recorder.record(
                    reference(&*b.pod),
                    "Normal",
                    "Scheduled",
                    format!("Successfully assigned {ns}/{name} to {}", b.node),
                );
            }
            Err(e) => {
                self.metrics.bind_errors.inc();
                if self.cache.assumed.remove(&b.key) {
                    self.cache.unplace(&b.key);
                }
                let gone = matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                if gone {
                    tracing::debug!("binding {} to {}: {e}", b.key, b.node);
                } else {
                    tracing::warn!("binding {} to {}: {e}; retrying", b.key, b.node);
                    self.queue.retry_later(&b.key, b.pod);
                }
            }
        }
    }

    fn unschedulable(&mut self, key: &str, pod: &Arc<Pod>, message: String) {
        self.queue.unschedulable(key);
        let Some(entry) = self.queue.entry_mut(key) else {
            return;
        };
        // Say it again only when the reason changes or a minute has passed.
        let repeat = entry
            .last_failure
            .as_ref()
            .is_some_and(|(m, at)| *m == message && at.elapsed() < Duration::from_secs(60));
        if repeat {
            return;
        }
        entry.last_failure = Some((message.clone(), Instant::now()));
        tracing::info!("{key} is unschedulable: {message}");
        self.recorder.record(
            reference(&**pod),
            "Warning",
            "FailedScheduling",
            message.clone(),
        );
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        tokio::spawn(async move {
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": crate::component::now(),
            }]}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::debug!("marking {ns}/{name} unschedulable: {e}");
            }
        });
    }
}

/// xorshift64: tie-breaking needs no cryptographic quality.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}
