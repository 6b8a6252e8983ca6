//! Plumbing every controller shares: caches fed by one watch per kind,
//! the error type, expectations, and helpers for owner references.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::component::events::Recorder;
use crate::component::metrics::Registry;

/// A failed reconcile; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An always-fresh cache of every `K` in the cluster.
pub fn cache<K>(api: Api<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(r) = s.next().await {
            if let Err(e) = r {
                tracing::warn!("watch for cache: {e}");
            }
        }
    });
    reader
}

/// A cache of every `K` and the stream of objects it changes, in that
/// order: a controller triggered from this stream always finds the change
/// already in the store. (Triggering from a second watch races the cache:
/// a reconcile could run before its cache saw the change and then wait
/// for a trigger that never comes.)
pub fn reflected<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    (reader, stream)
}

/// The controller-manager's one watch of every pod: the store all its
/// controllers read, and for each controller that subscribes, every pod
/// the watch changes (deleted ones included), sent after the store has it.
/// One watch instead of one per controller keeps the API server's load and
/// our memory from growing with the number of controllers.
#[derive(Clone)]
pub struct PodFeed {
    store: Store<Pod>,
    subscribers: Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Pod>>>>,
}

impl PodFeed {
    /// Starts the watch.
    pub fn start(api: Api<Pod>) -> Self {
        let (store, writer) = reflector::store();
        let subscribers: Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Pod>>>> = Arc::default();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let fan_out = subscribers.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(stream);
            while let Some(r) = s.next().await {
                match r {
                    // Unbounded, so a busy controller never stalls the
                    // others or the store; controllers drain their trigger
                    // streams into their own queues at once.
                    Ok(pod) => fan_out
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|tx| tx.send(pod.clone()).is_ok()),
                    Err(e) => tracing::warn!("pod watch: {e}"),
                }
            }
        });
        Self { store, subscribers }
    }

    pub fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// The pods the watch changes from now on, as a controller trigger.
    pub fn subscribe(
        &self,
    ) -> impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|pod| (Ok(pod), rx))
        })
    }
}

/// Longest a reconcile may take. A call that never returns (a connection
/// that died mid-request) would otherwise hold the object forever: the
/// controller runs one reconcile per object at a time.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds a reconcile by `RECONCILE_TIMEOUT`; a timeout is an error, so the
/// object is retried.
pub async fn bounded<F>(reconcile: F) -> Result<kube::runtime::controller::Action>
where
    F: std::future::Future<Output = Result<kube::runtime::controller::Action>>,
{
    tokio::time::timeout(RECONCILE_TIMEOUT, reconcile)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Other(format!(
                "reconcile took over {RECONCILE_TIMEOUT:?}; retrying"
            )))
        })
}

/// What the controllers share.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    /// Where `pods` comes from; controllers subscribe to its changes.
    pub pod_feed: PodFeed,
    pub recorder: Recorder,
    pub expectations: Expectations,
    pub metrics: Arc<Registry>,
}

/// Creations and deletions a controller has made but not yet seen through
/// its cache. Until they show up, the controller counts them as done, so a
/// slow watch never makes it create or delete twice.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

#[derive(Default)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// How long an expectation is trusted before the cache wins anyway (a
/// create that failed silently, say).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(300);

impl Expectations {
    pub fn created(&self, owner: &str, name: String) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.entry(owner.to_string()).or_default();
        p.creates.insert(name);
        p.since.get_or_insert_with(Instant::now);
    }

    pub fn deleted(&self, owner: &str, name: String) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.entry(owner.to_string()).or_default();
        p.deletes.insert(name);
        p.since.get_or_insert_with(Instant::now);
    }

    /// Settles expectations against the pods now visible (`present` maps a
    /// name to whether it is terminating) and returns the net count of
    /// creations and deletions still in flight.
    pub fn outstanding(&self, owner: &str, present: &HashMap<String, bool>) -> (usize, usize) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = m.get_mut(owner) else {
            return (0, 0);
        };
        p.creates.retain(|n| !present.contains_key(n));
        p.deletes
            .retain(|n| present.get(n).is_some_and(|terminating| !terminating));
        let expired = p.since.is_some_and(|s| s.elapsed() > EXPECTATION_TIMEOUT);
        if p.creates.is_empty() && p.deletes.is_empty() || expired {
            m.remove(owner);
            return (0, 0);
        }
        (p.creates.len(), p.deletes.len())
    }

    pub fn forget(&self, owner: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(owner);
    }
}

/// Deletes pod `name` of the owner whose uid is `owner`, expecting the
/// deletion first. Returns whether it deleted it (false: already gone).
///
/// The call runs in a task of its own, which finishes even when the
/// reconcile awaiting it is cut short (`bounded`): a delete abandoned on
/// the way would leave an expectation that nothing ever meets, holding the
/// owner back until it expires. A failed delete forgets the owner's
/// expectations, wherever the reconcile is by then.
pub async fn delete_expected(
    shared: &Arc<Context>,
    api: &Api<Pod>,
    owner: &str,
    name: &str,
) -> Result<bool> {
    shared.expectations.deleted(owner, name.to_string());
    let call = {
        let (shared, api, owner, name) = (
            shared.clone(),
            api.clone(),
            owner.to_string(),
            name.to_string(),
        );
        tokio::spawn(async move {
            let r = api.delete(&name, &kube::api::DeleteParams::default()).await;
            let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
            if matches!(&r, Err(e) if !gone(e)) {
                shared.expectations.forget(&owner);
            }
            r.map(|_| true)
                .or_else(|e| if gone(&e) { Ok(false) } else { Err(e) })
        })
    };
    match call.await {
        Ok(r) => Ok(r?),
        Err(e) => {
            shared.expectations.forget(owner);
            Err(Error::Other(format!("deleting pod {name}: {e}")))
        }
    }
}

/// A write's outcome with "not found" counted as done: the object is
/// already gone, which is what a delete or a release wanted.
pub fn ignore_404<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The controller reference of an object, if it has one.
pub fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs.into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// An owner reference that makes `owner` the controller of a dependent.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Is the pod Ready, and since when?
pub fn pod_ready_since(pod: &Pod) -> Option<Option<k8s_openapi::jiff::Timestamp>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready for at least `min_ready` seconds (Kubernetes' "available").
pub fn pod_available(pod: &Pod, min_ready: i32, now: k8s_openapi::jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => now.duration_since(since).as_secs() >= i64::from(min_ready),
    }
}

/// Neither being deleted nor finished.
pub fn pod_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// A short, stable hash of a pod template, spelled like Kubernetes' hashes
/// (no vowels, so it never forms words). `collisions`, when above zero, is
/// mixed in so that a controller can step past a hash that two different
/// templates once shared (a DaemonSet's `collisionCount`).
pub fn template_hash(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    collisions: i32,
) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if collisions > 0 {
        bytes.extend_from_slice(collisions.to_string().as_bytes());
    }
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = u64::from(h);
    let mut out = String::new();
    loop {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
        if n == 0 {
            break;
        }
    }
    out
}

/// Rewrites a pod's owner references (adoption or release) unless the pod
/// changed or was recreated meanwhile: the uid and resourceVersion go along
/// as preconditions. False if the pod changed or is gone.
pub async fn set_pod_owners(api: &Api<Pod>, pod: &Pod, refs: &[OwnerReference]) -> Result<bool> {
    let patch = serde_json::json!({"metadata": {
        "ownerReferences": refs,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The pods `owner` controls: its own that still match `selector`, plus
/// live orphans that match and `may_adopt` accepts, which it adopts. Its
/// own that no longer match are released.
pub async fn claim_pods<K: Resource<DynamicType = ()>>(
    pods: &Store<Pod>,
    api: &Api<Pod>,
    owner: &K,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    may_adopt: impl Fn(&Pod) -> bool,
) -> Result<Vec<Arc<Pod>>> {
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut out = Vec::new();
    for pod in pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let matches = apimachinery::selectors::selector_matches(selector, &labels);
        let refs = pod.metadata.owner_references.clone().unwrap_or_default();
        match controller_of(Some(&refs)) {
            Some(r) if r.uid == uid && matches => out.push(pod),
            Some(r) if r.uid == uid => {
                let rest: Vec<_> = refs.iter().filter(|r| r.uid != uid).cloned().collect();
                set_pod_owners(api, &pod, &rest).await?;
            }
            None if matches && pod_active(&pod) && may_adopt(&pod) => {
                let mut refs = refs.clone();
                refs.push(controller_ref(owner));
                if set_pod_owners(api, &pod, &refs).await? {
                    out.push(pod);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_count_until_the_cache_catches_up() {
        let e = Expectations::default();
        e.created("rs", "a".into());
        e.created("rs", "b".into());
        let mut present = HashMap::new();
        assert_eq!(e.outstanding("rs", &present), (2, 0));
        present.insert("a".to_string(), false);
        assert_eq!(e.outstanding("rs", &present), (1, 0));
        present.insert("b".to_string(), false);
        assert_eq!(e.outstanding("rs", &present), (0, 0));
        e.deleted("rs", "a".into());
        assert_eq!(e.outstanding("rs", &present), (0, 1));
        present.insert("a".to_string(), true);
        assert_eq!(
            e.outstanding("rs", &present),
            (0, 0),
            "terminating counts as deleted"
        );
    }
}
