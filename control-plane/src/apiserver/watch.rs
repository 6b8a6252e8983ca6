//! The watch cache: one etcd watch over `/registry/` shared by every
//! client watch, with a window of recent events so a client can resume
//! from the resourceVersion it last saw.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use serde_json::Value;
use tokio::sync::broadcast;

use super::storage::{decode, Storage};

/// How many recent events are kept for resuming watches.
const WINDOW: usize = 50_000;

/// How many bytes of objects those events may hold: a burst of large
/// objects (ConfigMaps near the size limit) must not keep gigabytes.
pub const WINDOW_BYTES: usize = 256 * 1024 * 1024;

/// One change to one key.
#[derive(Debug)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    /// The object after the change; for a deletion, its last state with the
    /// deletion's revision.
    pub object: Value,
    /// The object before the change, when there was one.
    pub prev: Option<Value>,
    pub deleted: bool,
}

struct Inner {
    /// Each event with the bytes of the objects it holds.
    window: VecDeque<(Arc<Event>, usize)>,
    window_bytes: usize,
    /// Every event after this revision is in the window or still to come.
    complete_after: i64,
    /// The newest revision the cache has seen.
    latest: i64,
    tx: broadcast::Sender<Arc<Event>>,
    /// Namespaces that exist and are not terminating, as of `latest`: a
    /// create in one of them needs no extra etcd read (Kubernetes'
    /// NamespaceLifecycle admission also reads a cache and goes to storage
    /// only on a miss).
    active_namespaces: std::collections::HashSet<String>,
}

/// Shared by all handlers.
pub struct WatchCache {
    inner: Mutex<Inner>,
}

/// Events a watcher missed so far, and the receiver for those to come.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Returned when a client asks to resume from a revision the cache no longer has.
#[derive(Debug)]
pub struct TooOld {
    pub requested: i64,
    pub oldest: i64,
}

impl WatchCache {
    /// Starts the cache at etcd's current revision and the task that feeds it.
    pub async fn start(storage: Storage) -> Result<Arc<Self>, super::storage::StorageError> {
        let page = storage
            .list("/registry/namespaces/", None, None, None)
            .await?;
        let rev = page.revision;
        let active_namespaces = page
            .items
            .iter()
            .filter(|(_, s)| s.value.pointer("/metadata/deletionTimestamp").is_none())
            .filter_map(|(_, s)| s.value.pointer("/metadata/name").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let (tx, _) = broadcast::channel(4096);
        let cache = Arc::new(Self {
            inner: Mutex::new(Inner {
                window: VecDeque::new(),
                window_bytes: 0,
                complete_after: rev,
                latest: rev,
                tx,
                active_namespaces,
            }),
        });
        tokio::spawn(feed(cache.clone(), storage));
        Ok(cache)
    }

    /// The newest revision seen (for bookmarks).
    pub fn latest(&self) -> i64 {
        self.lock().latest
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events after `rev` that the cache holds, and a receiver for the rest.
    /// Both are taken under one lock so nothing falls between them.
    pub fn subscribe(&self, rev: i64) -> Result<Subscription, TooOld> {
        let inner = self.lock();
        if rev < inner.complete_after {
            return Err(TooOld {
                requested: rev,
                oldest: inner.complete_after,
            });
        }
        let backlog = inner
            .window
            .iter()
            .filter(|(e, _)| e.rev > rev)
            .map(|(e, _)| e.clone())
            .collect();
        Ok((backlog, inner.tx.subscribe()))
    }

    /// True when the cache knows `ns` exists and is not terminating; false
    /// means "ask etcd".
    pub fn namespace_active(&self, ns: &str) -> bool {
        self.lock().active_namespaces.contains(ns)
    }

    /// Adds an event holding `bytes` bytes of stored objects.
    fn push(&self, event: Event, bytes: usize) {
        let mut inner = self.lock();
        if let Some(ns) = event.key.strip_prefix("/registry/namespaces/") {
            let active = !event.deleted
                && event
                    .object
                    .pointer("/metadata/deletionTimestamp")
                    .is_none();
            if active {
                inner.active_namespaces.insert(ns.to_string());
            } else {
                inner.active_namespaces.remove(ns);
            }
        }
        let event = Arc::new(event);
        inner.latest = inner.latest.max(event.rev);
        inner.window.push_back((event.clone(), bytes));
        inner.window_bytes += bytes;
        // Whichever bound is reached first: a watcher resuming from before
        // the oldest kept event relists, as after compaction.
        while inner.window.len() > WINDOW || inner.window_bytes > WINDOW_BYTES {
            let Some((old, size)) = inner.window.pop_front() else {
                break;
            };
            inner.window_bytes -= size;
            inner.complete_after = old.rev;
        }
        let _ = inner.tx.send(event);
    }

    /// History was lost (etcd compacted past us): start over at `rev` and
    /// end every open watch, so clients relist.
    fn reset(&self, rev: i64) {
        let mut inner = self.lock();
        inner.window.clear();
        inner.window_bytes = 0;
        // Missed events may have removed namespaces: trust etcd until the
        // next events bring them back.
        inner.active_namespaces.clear();
        inner.complete_after = rev;
        inner.latest = rev;
        let (tx, _) = broadcast::channel(4096);
        inner.tx = tx;
    }
}

async fn feed(cache: Arc<WatchCache>, storage: Storage) {
    loop {
        let start = cache.latest() + 1;
        let mut client = storage.client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        match client.watch("/registry/", Some(opts)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                tracing::warn!(
                                    compacted = resp.compact_revision(),
                                    "watch history compacted; resetting watch cache"
                                );
                                let rev = storage
                                    .current_revision()
                                    .await
                                    .unwrap_or(resp.compact_revision());
                                cache.reset(rev);
                            }
                            break;
                        }
                        for ev in resp.events() {
                            let bytes = ev.kv().map_or(0, |kv| kv.key().len() + kv.value().len())
                                + ev.prev_kv().map_or(0, |kv| kv.value().len());
                            if let Some(e) = convert(ev) {
                                cache.push(e, bytes);
                            }
                        }
                        if let Some(h) = resp.header() {
                            let mut inner = cache.lock();
                            // Progress notifications move the clock without events.
                            if resp.events().is_empty() && h.revision() > inner.latest {
                                inner.latest = h.revision();
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch broke; re-establishing");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch etcd; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn convert(ev: &etcd_client::Event) -> Option<Event> {
    let kv = ev.kv()?;
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let prev = ev
        .prev_kv()
        .and_then(|p| decode(p.key(), p.value(), p.mod_revision()).ok());
    match ev.event_type() {
        EventType::Put => {
            let object = match decode(kv.key(), kv.value(), kv.mod_revision()) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(%key, error = %e, "skipping undecodable object");
                    return None;
                }
            };
            Some(Event {
                rev: kv.mod_revision(),
                key,
                object,
                prev,
                deleted: false,
            })
        }
        EventType::Delete => {
            let rev = kv.mod_revision();
            let mut object = prev.clone()?;
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
            }
            Some(Event {
                rev,
                key,
                object,
                prev,
                deleted: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_bounded_in_bytes() {
        let (tx, _) = broadcast::channel(16);
        let cache = WatchCache {
            inner: Mutex::new(Inner {
                window: VecDeque::new(),
                window_bytes: 0,
                complete_after: 0,
                latest: 0,
                tx,
                active_namespaces: Default::default(),
            }),
        };
        let big = WINDOW_BYTES / 4 + 1;
        for rev in 1..=10 {
            let event = Event {
                rev,
                key: format!("/registry/configmaps/default/c{rev}"),
                object: Value::Null,
                prev: None,
                deleted: false,
            };
            cache.push(event, big);
        }
        let inner = cache.lock();
        assert!(inner.window_bytes <= WINDOW_BYTES);
        assert_eq!(inner.window.len(), 3);
        drop(inner);
        // A watcher resuming from before the kept window is told to relist.
        let too_old = cache.subscribe(2).unwrap_err();
        assert_eq!(too_old.oldest, 7);
        assert_eq!(cache.subscribe(7).unwrap().0.len(), 3);
    }
}
