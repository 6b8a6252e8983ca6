//! One kind's objects as a watch delivers them, kept in a local store.
//!
//! `events` is the watch (retried with backoff); `Store::apply` puts each
//! event in the store and tells the caller which keys changed. A relist
//! (after a disconnect, say) is collected apart and replaces the store at
//! once when complete, and every key it may have changed is reported,
//! so objects deleted while the watch was away are seen as deleted.
//!
//! Callers select over several kinds' events and act once per batch, so
//! the store is driven by hand rather than by a task of its own. (The
//! controller-manager's caches are kube's reflector stores instead: its
//! controllers act on objects, never on what a relist removed.)

use std::collections::btree_map::{self, BTreeMap};
use std::fmt::Debug;

use futures::Stream;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// An object's namespace (empty for cluster-scoped kinds) and name.
pub type Key = (String, String);

/// The key of `o`.
pub fn key<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// The watch of `api`'s objects, retried with kube's default backoff;
/// errors are passed on for the caller to log.
pub fn events<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, config).default_backoff()
}

/// One key an event changed, with the value it had before (the new one,
/// if any, is in the store).
#[derive(Debug, PartialEq)]
pub struct Change<T> {
    pub key: Key,
    pub old: Option<T>,
}

/// What a watch has shown of one kind, each object read into a `T`.
#[derive(Debug)]
pub struct Store<T> {
    items: BTreeMap<Key, T>,
    relist: Option<BTreeMap<Key, T>>,
    listed: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            relist: None,
            listed: false,
        }
    }
}

impl<T> Store<T> {
    /// Applies one watch event. `read` makes the stored value of an object,
    /// or None to keep no entry for it. Returns the keys that changed: the
    /// object's for an update or a delete, and at the end of a relist every
    /// key held before or after it.
    pub fn apply<K: Resource>(
        &mut self,
        event: watcher::Event<K>,
        mut read: impl FnMut(K) -> Option<T>,
    ) -> Vec<Change<T>> {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                let k = key(&o);
                if let (Some(r), Some(v)) = (self.relist.as_mut(), read(o)) {
                    r.insert(k, v);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.items, fresh);
                self.listed = true;
                let added: Vec<Change<T>> = self
                    .items
                    .keys()
                    .filter(|k| !old.contains_key(*k))
                    .map(|k| Change {
                        key: k.clone(),
                        old: None,
                    })
                    .collect();
                old.into_iter()
                    .map(|(key, v)| Change { key, old: Some(v) })
                    .chain(added)
                    .collect()
            }
            watcher::Event::Apply(o) => {
                let k = key(&o);
                let old = match read(o) {
                    Some(v) => self.items.insert(k.clone(), v),
                    None => self.items.remove(&k),
                };
                vec![Change { key: k, old }]
            }
            watcher::Event::Delete(o) => {
                let k = key(&o);
                let old = self.items.remove(&k);
                vec![Change { key: k, old }]
            }
        }
    }

    /// Whether a complete list has arrived: before that, an object missing
    /// from the store may just not have been seen yet.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Whether a relist is under way (the store still shows the old state).
    pub fn relisting(&self) -> bool {
        self.relist.is_some()
    }

    pub fn get(&self, key: &Key) -> Option<&T> {
        self.items.get(key)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.items.contains_key(key)
    }

    /// Entries in key order.
    pub fn iter(&self) -> btree_map::Iter<'_, Key, T> {
        self.items.iter()
    }

    pub fn values(&self) -> btree_map::Values<'_, Key, T> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// An entry to fill in from elsewhere than the watch (a newer copy the
    /// caller holds); the next relist replaces it like any other.
    pub fn entry(&mut self, key: Key) -> btree_map::Entry<'_, Key, T> {
        self.items.entry(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    fn cm(ns: &str, name: &str, v: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        c.data = Some([("v".to_string(), v.to_string())].into());
        c
    }

    fn value(c: ConfigMap) -> Option<String> {
        c.data?.remove("v").filter(|v| !v.is_empty())
    }

    fn k(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    #[test]
    fn updates_and_deletes_report_their_key() {
        let mut s = Store::default();
        assert_eq!(
            s.apply(Event::Apply(cm("a", "x", "1")), value),
            [Change {
                key: k("a", "x"),
                old: None
            }]
        );
        assert_eq!(
            s.apply(Event::Apply(cm("a", "x", "2")), value),
            [Change {
                key: k("a", "x"),
                old: Some("1".into())
            }]
        );
        assert_eq!(s.get(&k("a", "x")).map(String::as_str), Some("2"));
        // Read as nothing: no entry kept.
        s.apply(Event::Apply(cm("a", "x", "")), value);
        assert!(s.is_empty());
        s.apply(Event::Apply(cm("a", "y", "3")), value);
        assert_eq!(
            s.apply(Event::Delete(cm("a", "y", "3")), value),
            [Change {
                key: k("a", "y"),
                old: Some("3".into())
            }]
        );
        assert!(!s.listed());
    }

    #[test]
    fn a_relist_replaces_the_store_at_once() {
        let mut s = Store::default();
        s.apply(Event::Apply(cm("a", "kept", "1")), value);
        s.apply(Event::Apply(cm("a", "gone", "1")), value);
        assert!(s.apply(Event::<ConfigMap>::Init, value).is_empty());
        assert!(s.relisting());
        assert!(s
            .apply(Event::InitApply(cm("a", "kept", "2")), value)
            .is_empty());
        assert!(s
            .apply(Event::InitApply(cm("a", "new", "1")), value)
            .is_empty());
        // Nothing changes until the list is complete.
        assert_eq!(s.get(&k("a", "gone")).map(String::as_str), Some("1"));
        assert_eq!(s.get(&k("a", "kept")).map(String::as_str), Some("1"));
        let mut changes = s.apply(Event::<ConfigMap>::InitDone, value);
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            changes,
            [
                Change {
                    key: k("a", "gone"),
                    old: Some("1".into())
                },
                Change {
                    key: k("a", "kept"),
                    old: Some("1".into())
                },
                Change {
                    key: k("a", "new"),
                    old: None
                },
            ]
        );
        let now: Vec<_> = s.iter().map(|(k, v)| (k.1.as_str(), v.as_str())).collect();
        assert_eq!(now, [("kept", "2"), ("new", "1")]);
        assert!(s.listed() && !s.relisting());
    }
}
