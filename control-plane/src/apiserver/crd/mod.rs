//! CustomResourceDefinitions (apiextensions.k8s.io/v1): the registry of
//! custom resources they define, and what every write of a CRD or of a
//! custom object goes through (validation of the definition, structural
//! schemas with pruning and defaults, printer columns, scale paths).

mod definition;
mod schema;
mod table;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult};
use super::request::Target;
use super::resources::{Resource, Subresource};
use super::storage::Storage;
use super::watch::WatchCache;

pub use definition::{admit as admit_definition, validate as validate_definition};
pub use table::render as table;

/// Where CustomResourceDefinitions themselves are stored.
pub const CRD_PREFIX: &str = "/registry/customresourcedefinitions/";

/// The paths of a custom resource's `/scale` subresource, as JSON pointers.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One additionalPrinterColumn of a served version.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// What one served version of a CRD needs at request time.
#[derive(Debug)]
pub struct Version {
    /// The CRD's name (`<plural>.<group>`).
    pub crd: String,
    /// The version objects are stored in.
    pub storage_version: String,
    /// `openAPIV3Schema` of this version, when it has one.
    pub schema: Option<Value>,
    pub columns: Vec<Column>,
    pub scale: Option<ScalePaths>,
}

struct Served {
    res: &'static Resource,
    version: Arc<Version>,
}

#[derive(Default)]
struct Inner {
    served: Vec<Served>,
    /// Resource descriptions handed out so far, by their content: handlers
    /// hold `&'static Resource` like the built-in table, so each distinct
    /// definition is leaked once and reused, never once per refresh.
    interned: HashMap<String, &'static Resource>,
    /// What was served last, in a form cheap to compare, and how often it
    /// changed: the OpenAPI documents are rebuilt only when it does.
    served_key: String,
    generation: u64,
}

/// The custom resources served now, rebuilt from the stored CRDs.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

/// The process's registry. One process serves one cluster, and the
/// resource table it extends is process-wide too.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_all(v: &[String]) -> &'static [&'static str] {
    Box::leak(
        v.iter()
            .map(|s| leak(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// JSON path of a scale field (`.spec.replicas`) as a JSON pointer.
fn pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, p| acc + "/" + p)
}

const CUSTOM_VERBS: &[&str] = &[
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];

impl Registry {
    /// The custom resource served at group/version/plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .served
            .iter()
            .find(|s| s.res.group == group && s.res.version == version && s.res.plural == plural)
            .map(|s| s.res)
    }

    /// Every custom resource served, in the order of their CRDs.
    pub fn resources(&self) -> Vec<&'static Resource> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.served.iter().map(|s| s.res).collect()
    }

    /// Every custom resource served with its `openAPIV3Schema`, and the
    /// generation of that set (it grows whenever a served definition changes).
    pub fn schemas(&self) -> (u64, Vec<(&'static Resource, Option<Value>)>) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let list = inner
            .served
            .iter()
            .map(|s| (s.res, s.version.schema.clone()))
            .collect();
        (inner.generation, list)
    }

    /// The generation of the served set (see `schemas`).
    pub fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// The definition behind `res`, when `res` is a custom resource.
    pub fn version(&self, res: &Resource) -> Option<Arc<Version>> {
        if super::resources::is_builtin(res) {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .served
            .iter()
            .find(|s| {
                s.res.group == res.group
                    && s.res.version == res.version
                    && s.res.plural == res.plural
            })
            .map(|s| s.version.clone())
    }

    /// The name of the CRD (other than `except`) that already claims the
    /// plural or kind in `group`.
    pub fn claimed(&self, group: &str, plural: &str, kind: &str, except: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .served
            .iter()
            .find(|s| {
                s.res.group == group
                    && s.version.crd != except
                    && (s.res.plural == plural || s.res.kind == kind)
            })
            .map(|s| s.version.crd.clone())
    }

    /// Serves exactly the established versions of `crds`.
    pub fn replace(&self, crds: &[Value]) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut served = Vec::new();
        let mut key = String::new();
        for crd in crds {
            if !definition::established(crd) || crd.pointer("/metadata/deletionTimestamp").is_some()
            {
                continue;
            }
            for (desc, version) in describe(crd) {
                let res = *inner
                    .interned
                    .entry(desc.fingerprint())
                    .or_insert_with(|| desc.leak());
                key.push_str(&desc.fingerprint());
                key.push_str(
                    &version
                        .schema
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_default(),
                );
                served.push(Served {
                    res,
                    version: Arc::new(version),
                });
            }
        }
        inner.served = served;
        if inner.served_key != key {
            inner.served_key = key;
            inner.generation += 1;
        }
    }

    /// Reloads every CRD from etcd.
    pub async fn refresh(&self, storage: &Storage) -> ApiResult<()> {
        let page = storage
            .list(CRD_PREFIX, None, None, None)
            .await
            .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?;
        let crds: Vec<Value> = page.items.into_iter().map(|(_, s)| s.value).collect();
        self.replace(&crds);
        Ok(())
    }
}

/// Keeps the registry equal to the stored CRDs: a reload now, then one
/// after every change to a CRD this server's watch cache sees.
pub async fn start(storage: Storage, cache: Arc<WatchCache>) -> anyhow::Result<()> {
    let (_, mut rx) = cache
        .subscribe(cache.latest())
        .map_err(|_| anyhow::anyhow!("the watch cache lost its own start"))?;
    registry()
        .refresh(&storage)
        .await
        .map_err(|e| anyhow::anyhow!("loading CustomResourceDefinitions: {}", e.message))?;
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let changed = match rx.recv().await {
                Ok(ev) => ev.key.starts_with(CRD_PREFIX),
                // Missed events may have held CRDs.
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => {
                    // The cache was reset: follow its new channel.
                    match cache.subscribe(cache.latest()) {
                        Ok((_, r)) => rx = r,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                    }
                    true
                }
            };
            if changed {
                if let Err(e) = registry().refresh(&storage).await {
                    tracing::warn!(error = %e.message, "reloading CustomResourceDefinitions");
                }
            }
        }
    });
    Ok(())
}

/// A custom resource's description before it is interned.
struct Desc {
    group: String,
    version: String,
    kind: String,
    plural: String,
    singular: String,
    namespaced: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    status: bool,
    scale: bool,
}

impl Desc {
    fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{}",
            self.group,
            self.version,
            self.kind,
            self.plural,
            self.singular,
            self.namespaced,
            self.short_names,
            self.categories,
            self.status,
            self.scale
        )
    }

    fn leak(&self) -> &'static Resource {
        let group = leak(&self.group);
        let version = leak(&self.version);
        let kind = leak(&self.kind);
        let mut subs = Vec::new();
        if self.status {
            subs.push(Subresource {
                name: "status",
                kind,
                group,
                version,
                verbs: &["get", "patch", "update"],
            });
        }
        if self.scale {
            subs.push(Subresource {
                name: "scale",
                kind: "Scale",
                group: "autoscaling",
                version: "v1",
                verbs: &["get", "patch", "update"],
            });
        }
        Box::leak(Box::new(Resource {
            group,
            version,
            kind,
            plural: leak(&self.plural),
            singular: leak(&self.singular),
            namespaced: self.namespaced,
            short_names: leak_all(&self.short_names),
            categories: leak_all(&self.categories),
            verbs: CUSTOM_VERBS,
            subresources: Box::leak(subs.into_boxed_slice()),
        }))
    }
}

/// The served versions of a CRD.
fn describe(crd: &Value) -> Vec<(Desc, Version)> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
    let plural = str_of(&names["plural"]);
    let kind = str_of(&names["kind"]);
    let singular = names["singular"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"] == json!(true))
        .map(|v| str_of(&v["name"]))
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"] == json!(true))
        .map(|v| {
            let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
                spec_replicas: pointer(s["specReplicasPath"].as_str().unwrap_or(".spec.replicas")),
                status_replicas: pointer(
                    s["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas"),
                ),
                label_selector: s["labelSelectorPath"].as_str().map(pointer),
            });
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .map(|cols| {
                    cols.iter()
                        .map(|c| Column {
                            name: str_of(&c["name"]),
                            type_: str_of(&c["type"]),
                            format: str_of(&c["format"]),
                            description: str_of(&c["description"]),
                            priority: c["priority"].as_i64().unwrap_or(0),
                            json_path: str_of(&c["jsonPath"]),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let desc = Desc {
                group: str_of(&spec["group"]),
                version: str_of(&v["name"]),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced: spec["scope"] != json!("Cluster"),
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                status: v.pointer("/subresources/status").is_some(),
                scale: scale.is_some(),
            };
            let version = Version {
                crd: str_of(&crd["metadata"]["name"]),
                storage_version: storage_version.clone(),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                columns,
                scale,
            };
            (desc, version)
        })
        .collect()
}

/// Decodes a custom object: its metadata checked as ObjectMeta, fields its
/// schema does not know pruned (and listed), then its defaults applied.
pub fn decode(res: &Resource, body: &Value) -> Option<Result<(Value, Vec<String>), String>> {
    let version = registry().version(res)?;
    let mut obj = body.clone();
    if let Some(meta) = obj.get("metadata") {
        if let Err(e) = serde_path_to_error::deserialize::<
            _,
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >(meta.clone())
        {
            return Some(Err(format!("metadata.{}: {}", e.path(), e.inner())));
        }
    }
    let mut unknown = Vec::new();
    if let Some(s) = &version.schema {
        schema::prune_root(&mut obj, s, &mut unknown);
        schema::default(&mut obj, s);
    }
    Some(Ok((obj, unknown)))
}

/// Checks a custom object about to be stored against its schema (422
/// naming each field that is wrong). Objects of other resources pass.
pub fn validate(res: &Resource, obj: &Value) -> ApiResult<()> {
    let Some(version) = registry().version(res) else {
        return Ok(());
    };
    let Some(s) = &version.schema else {
        return Ok(());
    };
    let mut causes = Vec::new();
    schema::validate(obj, s, "", &mut causes);
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        res.kind,
        res.group,
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(""),
        causes,
    ))
}

/// What a create of a custom object starts from: with a status
/// subresource, clients cannot set the status on create.
pub fn prepare_create(target: &Target, obj: &mut Value) {
    if registry().version(target.res).is_some() && target.res.has_status() {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
}

/// The scale paths of a custom resource; None for built-in resources.
pub fn scale_paths(res: &Resource) -> Option<ScalePaths> {
    registry().version(res).and_then(|v| v.scale.clone())
}

/// Removes every object of a deleted CRD, in every version.
pub async fn delete_objects(storage: &Storage, crd: &Value) -> ApiResult<()> {
    let group = crd.pointer("/spec/group").and_then(Value::as_str);
    let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str);
    let (Some(group), Some(plural)) = (group, plural) else {
        return Ok(());
    };
    if group.is_empty() || plural.is_empty() {
        return Ok(());
    }
    storage
        .delete_prefix(&format!("/registry/{group}/{plural}/"))
        .await
        .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))
}
