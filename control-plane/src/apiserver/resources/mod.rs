//! The resources this API server serves, and how they appear in discovery.

mod table;

pub use table::RESOURCES;

/// A subresource of a resource (`pods/status`, `deployments/scale`, ...).
#[derive(Debug)]
pub struct Subresource {
    pub name: &'static str,
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub verbs: &'static [&'static str],
}

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the resource is kept in etcd (componentstatuses and bindings are not).
    pub fn stored(&self) -> bool {
        !matches!(self.plural, "componentstatuses" | "bindings")
            && !matches!(
                self.group,
                "authorization.k8s.io" | "authentication.k8s.io" | "metrics.k8s.io"
            )
    }

    /// Whether `name` is a subresource of this resource.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether the status is only written through `/status`.
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }
}

/// Looks a resource up by group, version and plural name: a built-in one,
/// or a custom one some CustomResourceDefinition serves.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .chain(&crate::apiserver::resource_metrics::RESOURCES)
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .or_else(|| crate::apiserver::crd::registry().find(group, version, plural))
}

/// Looks a resource up by apiVersion and kind (as found in a body).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    all()
        .into_iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// Every resource served now: the built-in ones, then the custom ones.
pub fn all() -> Vec<&'static Resource> {
    let mut out: Vec<&'static Resource> = RESOURCES.iter().collect();
    out.extend(&crate::apiserver::resource_metrics::RESOURCES);
    out.extend(crate::apiserver::crd::registry().resources());
    out
}

/// Whether `res` is one of the built-in resources (not from a CRD).
pub fn is_builtin(res: &Resource) -> bool {
    RESOURCES.iter().any(|r| std::ptr::eq(r, res))
}

/// The group/versions served, in discovery order (core first).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in all() {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
