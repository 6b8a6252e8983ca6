//! Recording core/v1 Events (what `kubectl describe` and `kubectl get
//! events` show). Writes go through a bounded queue drained in the
//! background, so a burst never slows the component; when the queue is
//! full, events are dropped and counted, as Kubernetes' broadcaster does.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use kube::api::{Api, ObjectMeta, PostParams};

use super::metrics::Counter;

/// Sends events for one component.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Event>,
    component: String,
    host: String,
    /// The node a node agent speaks for, named as the events' source.
    node: Option<String>,
    dropped: Arc<Counter>,
}

impl Recorder {
    /// Starts `writers` background writers.
    pub fn new(client: kube::Client, component: &str, dropped: Arc<Counter>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4096);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..4 {
            let rx = rx.clone();
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    let Some(ev) = rx.lock().await.recv().await else {
                        return;
                    };
                    let ns = ev.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                    if let Err(e) = api.create(&PostParams::default(), &ev).await {
                        tracing::debug!("recording event {:?}: {e}", ev.reason);
                    }
                }
            });
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self {
            tx,
            component: component.into(),
            host,
            node: None,
            dropped,
        }
    }

    /// The recorder of the agent of `node`: its events name the node as
    /// their source and reporting instance, as kubelet's do.
    pub fn on_node(mut self, node: &str) -> Self {
        self.host = node.to_string();
        self.node = Some(node.to_string());
        self
    }

    /// Records `reason`/`message` about `object` (`type_` Normal or Warning).
    pub fn record(&self, object: ObjectReference, type_: &str, reason: &str, message: String) {
        let now = super::now();
        let ns = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    object.name.as_deref().unwrap_or("unknown"),
                    nanos
                )),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.node.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone()),
            ..Default::default()
        };
        if self.tx.try_send(ev).is_err() {
            self.dropped.inc();
        }
    }
}

/// A reference to `obj` for an event's involvedObject.
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}
