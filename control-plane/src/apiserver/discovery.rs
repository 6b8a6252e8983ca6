//! Discovery (/version, /api, /apis, group versions); the OpenAPI
//! documents are in `super::openapi`.

use serde_json::{json, Value};

use super::resources::{self, Resource};

/// Kubernetes version this server speaks (kubectl picks its matching minor).
pub const KUBE_MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-kestrel.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn group_json(group: &str) -> Value {
    let versions: Vec<Value> = resources::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list() -> Value {
    let mut groups = Vec::new();
    let mut seen = Vec::new();
    for (g, _) in resources::group_versions() {
        if !g.is_empty() && !seen.contains(&g) {
            seen.push(g);
            groups.push(group_json(g));
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(group: &str) -> Option<Value> {
    resources::group_versions()
        .iter()
        .any(|(g, _)| *g == group && !g.is_empty())
        .then(|| {
            let mut g = group_json(group);
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        })
}

fn resource_entry(r: &Resource) -> Value {
    json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
        "shortNames": r.short_names,
        "categories": r.categories,
    })
}

/// The APIResourceList of one group/version, subresources included.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = resource_entry(r);
        if r.short_names.is_empty() {
            e.as_object_mut().map(|o| o.remove("shortNames"));
        }
        if r.categories.is_empty() {
            e.as_object_mut().map(|o| o.remove("categories"));
        }
        list.push(e);
        for s in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != r.group || s.version != r.version {
                e["group"] = json!(s.group);
                e["version"] = json!(s.version);
            }
            list.push(e);
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}
