//! Authorization of paths that name no resource (`/metrics`, `/healthz`,
//! `/version`, discovery, OpenAPI, the OIDC documents), by RBAC's
//! `nonResourceURLs`, as kube-apiserver does: admins may read them all,
//! everyone else what a binding grants. The bootstrap roles make discovery
//! readable to every authenticated user, health and version to everyone,
//! and `/metrics` to `system:masters` and `system:monitoring` only.

use axum::http::Method;

use super::super::auth::User;
use super::super::errors::{ApiError, ApiResult};
use super::super::{request, State, NODE_CERTIFICATE_PATH};
use super::rbac::Attributes;

/// Whether `path` is authorized here rather than as a resource request.
/// The node certificate endpoint is left to its handler, which lets each
/// node renew only its own certificate.
pub fn is_nonresource(path: &str) -> bool {
    path != NODE_CERTIFICATE_PATH && request::parse_path(path).is_none()
}

/// The user of a request without credentials: it may reach only what
/// `system:unauthenticated` is bound to.
pub fn anonymous() -> User {
    User {
        name: "system:anonymous".into(),
        groups: vec!["system:unauthenticated".into()],
    }
}

/// RBAC's verb for a non-resource request: the HTTP method, lower case.
fn verb(method: &Method) -> String {
    method.as_str().to_ascii_lowercase()
}

/// Decides whether `user` may send `method` to the non-resource `path`.
pub fn authorize(state: &State, user: &User, method: &Method, path: &str) -> ApiResult<()> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let attrs = Attributes {
        verb: verb(method),
        resource: None,
        path: path.to_string(),
    };
    if state.rbac.allows(user, &attrs) {
        return Ok(());
    }
    Err(ApiError::forbidden_plain(format!(
        "forbidden: User {:?} cannot {} path {path:?}",
        user.name, attrs.verb
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths_and_the_certificate_endpoint_are_not_nonresource() {
        for p in [
            "/metrics",
            "/healthz",
            "/version",
            "/api",
            "/apis/apps/v1",
            "/openapi/v3",
        ] {
            assert!(is_nonresource(p), "{p}");
        }
        for p in [
            "/api/v1/pods",
            "/api/v1/namespaces/default/secrets/x",
            NODE_CERTIFICATE_PATH,
        ] {
            assert!(!is_nonresource(p), "{p}");
        }
    }

    #[test]
    fn the_verb_is_the_method_in_lower_case() {
        assert_eq!(verb(&Method::GET), "get");
        assert_eq!(verb(&Method::POST), "post");
    }
}
