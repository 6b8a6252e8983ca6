//! Role-based access control (rbac.authorization.k8s.io/v1): a request is
//! allowed when some binding naming the user, one of its groups or its
//! service account leads to a role with a rule covering it. Roles and
//! bindings are kept in memory, filled from etcd at start and kept current
//! by the watch cache, so a decision reads no storage.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::super::auth::User;
use super::super::errors::Cause;
use super::super::storage::Storage;
use super::super::watch::WatchCache;

/// The etcd prefixes the cache mirrors.
const PREFIXES: [&str; 4] = [
    "/registry/clusterroles/",
    "/registry/clusterrolebindings/",
    "/registry/roles/",
    "/registry/rolebindings/",
];

/// What a request asks to do, in RBAC's terms.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    /// None for a non-resource path (`/healthz`, `/version`).
    pub resource: Option<ResourceAttributes>,
    pub path: String,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceAttributes {
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// Every Role, ClusterRole and binding, by etcd key.
#[derive(Default)]
pub struct Cache {
    objects: RwLock<HashMap<String, Value>>,
    /// Signalled when a ClusterRole may have changed (see `aggregation`).
    cluster_roles: tokio::sync::Notify,
}

impl Cache {
    /// Lists the RBAC objects, then follows the watch cache for as long as
    /// the server runs; relists whenever it may have missed an event.
    pub async fn start(storage: Storage, watch: Arc<WatchCache>) -> anyhow::Result<Arc<Self>> {
        let cache = Arc::new(Self::default());
        let mut sub = cache.sync(&storage, &watch).await?;
        let c = cache.clone();
        tokio::spawn(async move {
            loop {
                if let Some(s) = sub.take() {
                    c.follow(s).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                match c.sync(&storage, &watch).await {
                    Ok(s) => sub = s,
                    Err(e) => tracing::warn!(error = %e, "relisting RBAC objects failed; retrying"),
                }
            }
        });
        Ok(cache)
    }

    /// One full list; returns the subscription that continues it.
    async fn sync(
        &self,
        storage: &Storage,
        watch: &WatchCache,
    ) -> anyhow::Result<Option<Following>> {
        // Subscribed before listing, so nothing falls in between; events
        // the lists already reflect are skipped by revision.
        let Ok((backlog, rx)) = watch.subscribe(watch.latest()) else {
            return Ok(None);
        };
        let mut objects = HashMap::new();
        let mut listed_at = Vec::new();
        for prefix in PREFIXES {
            let page = storage.list(prefix, None, None, None).await?;
            for (key, stored) in page.items {
                objects.insert(key, stored.value);
            }
            listed_at.push((prefix, page.revision));
        }
        *self.objects.write().unwrap_or_else(|p| p.into_inner()) = objects;
        self.mark_cluster_roles_changed();
        let following = Following { rx, listed_at };
        for e in backlog {
            self.apply(&following, &e);
        }
        Ok(Some(following))
    }

    async fn follow(&self, mut f: Following) {
        loop {
            match f.rx.recv().await {
                Ok(e) => self.apply(&f, &e),
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
            }
        }
    }

    fn apply(&self, f: &Following, e: &super::super::watch::Event) {
        let Some((_, at)) = f.listed_at.iter().find(|(p, _)| e.key.starts_with(p)) else {
            return;
        };
        if e.rev <= *at {
            return;
        }
        if e.key.starts_with("/registry/clusterroles/") {
            self.mark_cluster_roles_changed();
        }
        let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
        if e.deleted {
            objects.remove(&e.key);
        } else {
            objects.insert(e.key.clone(), e.object.clone());
        }
    }

    /// Returns once a ClusterRole may have changed since the last call
    /// returned (or since the cache was filled, the first time).
    pub async fn cluster_roles_changed(&self) {
        self.cluster_roles.notified().await;
    }

    /// Wakes the next (or a waiting) [`Cache::cluster_roles_changed`].
    pub fn mark_cluster_roles_changed(&self) {
        // One stored permit: changes in a burst wake the waiter once.
        self.cluster_roles.notify_one();
    }

    /// The rules of a ClusterRole, or of a Role in `ns`.
    fn role_rules(
        objects: &HashMap<String, Value>,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Vec<Value> {
        let key = match kind {
            "ClusterRole" => format!("/registry/clusterroles/{name}"),
            "Role" => format!("/registry/roles/{ns}/{name}"),
            _ => return Vec::new(),
        };
        objects
            .get(&key)
            .and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The rules of the role a binding refers to.
    pub fn role_rules_of(&self, kind: &str, ns: &str, name: &str) -> Vec<Value> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        Self::role_rules(&objects, kind, ns, name)
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide rules
    /// only when it is empty).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Value> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (key, binding) in objects.iter() {
            let in_scope = if key.starts_with("/registry/clusterrolebindings/") {
                true
            } else if let Some(rest) = key.strip_prefix("/registry/rolebindings/") {
                !namespace.is_empty() && rest.split('/').next() == Some(namespace)
            } else {
                false
            };
            if !in_scope {
                continue;
            }
            let binding_ns = binding
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !binds(binding, binding_ns, user) {
                continue;
            }
            let kind = str_at(binding, "/roleRef/kind");
            let name = str_at(binding, "/roleRef/name");
            out.extend(Self::role_rules(&objects, kind, binding_ns, name));
        }
        out
    }

    /// Whether some rule allows `attrs` to `user`.
    pub fn allows(&self, user: &User, attrs: &Attributes) -> bool {
        let ns = attrs
            .resource
            .as_ref()
            .map(|r| r.namespace.as_str())
            .unwrap_or("");
        self.rules_for(user, ns)
            .iter()
            .any(|rule| rule_allows(rule, attrs))
    }
}

struct Following {
    rx: tokio::sync::broadcast::Receiver<Arc<super::super::watch::Event>>,
    listed_at: Vec<(&'static str, i64)>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether one of `binding`'s subjects is `user`.
fn binds(binding: &Value, binding_ns: &str, user: &User) -> bool {
    let Some(subjects) = binding.get("subjects").and_then(Value::as_array) else {
        return false;
    };
    subjects.iter().any(|s| {
        let name = str_at(s, "/name");
        match str_at(s, "/kind") {
            "User" => user.name == name,
            "Group" => {
                user.groups.iter().any(|g| g == name)
                    || (name == "system:authenticated" && user.name != "system:anonymous")
            }
            "ServiceAccount" => {
                let ns = match str_at(s, "/namespace") {
                    "" => binding_ns,
                    ns => ns,
                };
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether one PolicyRule covers `attrs`.
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    if !has(&strings(rule, "verbs"), &attrs.verb) {
        return false;
    }
    match &attrs.resource {
        Some(r) => {
            if !has(&strings(rule, "apiGroups"), &r.group) {
                return false;
            }
            let resources = strings(rule, "resources");
            let resource_ok = if r.subresource.is_empty() {
                has(&resources, &r.resource)
            } else {
                let combined = format!("{}/{}", r.resource, r.subresource);
                let any = format!("*/{}", r.subresource);
                resources
                    .iter()
                    .any(|x| x == "*" || *x == combined || *x == any)
            };
            if !resource_ok {
                return false;
            }
            let names = strings(rule, "resourceNames");
            names.is_empty() || (!r.name.is_empty() && names.contains(&r.name))
        }
        None => strings(rule, "nonResourceURLs").iter().any(|u| {
            u == "*"
                || *u == attrs.path
                || u.strip_suffix('*')
                    .is_some_and(|p| attrs.path.starts_with(p))
        }),
    }
}

/// Why `name` cannot be an RBAC object's name, if it cannot.
pub fn path_segment_problem(name: &str) -> Option<&'static str> {
    if name == "." || name == ".." {
        Some("may not be '.' or '..'")
    } else if name.contains('/') {
        Some("may not contain '/'")
    } else if name.contains('%') {
        Some("may not contain '%'")
    } else {
        None
    }
}

/// Field checks of Roles, ClusterRoles and their bindings.
pub fn validate(kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    match kind {
        "Role" | "ClusterRole" => {
            let rules = obj.get("rules").and_then(Value::as_array);
            for (i, rule) in rules.into_iter().flatten().enumerate() {
                let at = format!("rules[{i}]");
                if strings(rule, "verbs").is_empty() {
                    causes.push(Cause::required(format!("{at}.verbs")));
                }
                let urls = strings(rule, "nonResourceURLs");
                let resources = strings(rule, "resources");
                if !urls.is_empty() {
                    if kind == "Role" {
                        causes.push(Cause::invalid(
                            format!("{at}.nonResourceURLs"),
                            &Value::from(urls.clone()),
                            "namespaced rules cannot apply to non-resource URLs",
                        ));
                    }
                    if !resources.is_empty() {
                        causes.push(Cause::invalid(
                            format!("{at}.nonResourceURLs"),
                            &Value::from(urls),
                            "rules cannot apply to both regular resources and non-resource URLs",
                        ));
                    }
                } else {
                    if resources.is_empty() {
                        causes.push(Cause::required(format!("{at}.resources")));
                    }
                    if rule.get("apiGroups").and_then(Value::as_array).is_none() {
                        causes.push(Cause::required(format!("{at}.apiGroups")));
                    }
                }
            }
        }
        _ => {
            let role_kind = str_at(obj, "/roleRef/kind");
            let allowed: &[&str] = if kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !allowed.contains(&role_kind) {
                causes.push(Cause::not_supported(
                    "roleRef.kind",
                    &Value::from(role_kind),
                    allowed,
                ));
            }
            if str_at(obj, "/roleRef/apiGroup") != "rbac.authorization.k8s.io" {
                causes.push(Cause::not_supported(
                    "roleRef.apiGroup",
                    &Value::from(str_at(obj, "/roleRef/apiGroup")),
                    &["rbac.authorization.k8s.io"],
                ));
            }
            if str_at(obj, "/roleRef/name").is_empty() {
                causes.push(Cause::required("roleRef.name"));
            }
            let subjects = obj.get("subjects").and_then(Value::as_array);
            for (i, s) in subjects.into_iter().flatten().enumerate() {
                let at = format!("subjects[{i}]");
                if str_at(s, "/name").is_empty() {
                    causes.push(Cause::required(format!("{at}.name")));
                }
                match str_at(s, "/kind") {
                    "ServiceAccount" => {
                        if kind == "ClusterRoleBinding" && str_at(s, "/namespace").is_empty() {
                            causes.push(Cause::required(format!("{at}.namespace")));
                        }
                    }
                    "User" | "Group" => {
                        if str_at(s, "/apiGroup") != "rbac.authorization.k8s.io" {
                            causes.push(Cause::not_supported(
                                format!("{at}.apiGroup"),
                                &Value::from(str_at(s, "/apiGroup")),
                                &["rbac.authorization.k8s.io"],
                            ));
                        }
                    }
                    other => causes.push(Cause::not_supported(
                        format!("{at}.kind"),
                        &Value::from(other),
                        &["ServiceAccount", "User", "Group"],
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                namespace: "ns".into(),
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                name: name.into(),
            }),
            path: String::new(),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rule =
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]});
        assert!(rule_allows(&rule, &res("list", "", "pods", "", "")));
        assert!(rule_allows(&rule, &res("get", "", "pods", "log", "p")));
        assert!(!rule_allows(&rule, &res("get", "", "pods", "exec", "p")));
        assert!(!rule_allows(&rule, &res("create", "", "pods", "", "")));
        assert!(!rule_allows(&rule, &res("list", "apps", "pods", "", "")));
        let named = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/status"], "resourceNames": ["a"]});
        assert!(rule_allows(
            &named,
            &res("update", "apps", "deployments", "status", "a")
        ));
        assert!(!rule_allows(
            &named,
            &res("update", "apps", "deployments", "status", "b")
        ));
        assert!(!rule_allows(
            &named,
            &res("list", "apps", "deployments", "status", "")
        ));
        let urls = json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]});
        let path = |p: &str| Attributes {
            verb: "get".into(),
            resource: None,
            path: p.into(),
        };
        assert!(rule_allows(&urls, &path("/healthz")));
        assert!(rule_allows(&urls, &path("/api/v1")));
        assert!(!rule_allows(&urls, &path("/metrics")));
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let user = User {
            name: "system:serviceaccount:ns:robot".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        let b = |s: Value| json!({"subjects": [s]});
        assert!(binds(
            &b(json!({"kind": "ServiceAccount", "name": "robot"})),
            "ns",
            &user
        ));
        assert!(!binds(
            &b(json!({"kind": "ServiceAccount", "name": "robot"})),
            "other",
            &user
        ));
        assert!(binds(
            &b(json!({"kind": "Group", "name": "system:serviceaccounts"})),
            "",
            &user
        ));
        assert!(binds(
            &b(json!({"kind": "Group", "name": "system:authenticated"})),
            "",
            &user
        ));
        assert!(!binds(
            &b(json!({"kind": "User", "name": "robot"})),
            "",
            &user
        ));
    }
}
