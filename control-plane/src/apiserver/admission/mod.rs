//! Admission: checks on the object a write would store, after it is
//! decoded, defaulted and merged, before it is validated and written.
//! Some rules hold for everyone (fields that are set once); others depend
//! on who writes ([`noderestriction`]).
//!
//! The handlers do not carry the user: the request runs inside
//! [`with_user`], and the checks read it from the task.

pub mod noderestriction;
pub mod serviceaccount;

use std::future::Future;

use serde_json::Value;

use super::auth::User;
use super::errors::{ApiError, ApiResult, Cause};
use super::request::Target;
use super::State;

/// Admission plugins that can be turned off (those not listed here are
/// always on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Plugin {
    #[value(name = "ServiceAccount")]
    ServiceAccount,
}

/// The plugins on when no flag names them.
const DEFAULT_ON: &[Plugin] = &[Plugin::ServiceAccount];

/// Whether `p` is on under `--enable-admission-plugins` and
/// `--disable-admission-plugins`.
pub fn enabled(config: &super::Config, p: Plugin) -> bool {
    (DEFAULT_ON.contains(&p) || config.enable_admission_plugins.contains(&p))
        && !config.disable_admission_plugins.contains(&p)
}

/// Refuses a plugin both enabled and disabled: which one was meant is
/// unknown.
pub fn check_flags(config: &super::Config) -> anyhow::Result<()> {
    if let Some(p) = config
        .enable_admission_plugins
        .iter()
        .find(|p| config.disable_admission_plugins.contains(p))
    {
        anyhow::bail!(
            "admission plugin {p:?} is in both --enable-admission-plugins and --disable-admission-plugins"
        );
    }
    Ok(())
}

/// Changes an object about to be created (after defaulting, before
/// validation), for the plugins that complete what the client sent.
pub async fn mutate_create(state: &State, target: &Target, obj: &mut Value) -> ApiResult<()> {
    let on = |p| enabled(&state.config, p);
    if (target.res.group, target.res.kind) == ("", "Pod") && on(Plugin::ServiceAccount) {
        serviceaccount::admit_pod(state, obj).await?;
    }
    Ok(())
}

tokio::task_local! {
    static USER: User;
}

/// Runs a request's handling as `user`, for the checks below.
pub async fn with_user<F: Future>(user: User, f: F) -> F::Output {
    USER.scope(user, f).await
}

/// The node writing, when a node is.
fn writing_node() -> Option<String> {
    USER.try_with(|u| u.node_name().map(str::to_string))
        .ok()
        .flatten()
}

/// Checks an object about to be created.
pub async fn admit_create(state: &State, target: &Target, obj: &Value) -> ApiResult<()> {
    super::limits::object_fits(obj)?;
    super::authz::escalation::check(target, obj)?;
    match writing_node() {
        Some(node) => noderestriction::admit_create(state, &node, target, obj).await,
        None => Ok(()),
    }
}

/// Checks an update of `old` into `new` (main resource or subresource).
pub fn admit_update(target: &Target, old: &Value, new: &Value) -> ApiResult<()> {
    super::limits::object_fits(new)?;
    super::authz::escalation::check(target, new)?;
    // A node is told what it may not do before what nobody may.
    if let Some(node) = writing_node() {
        noderestriction::admit_update(&node, target, old, new)?;
    }
    set_once(target, old, new)
}

/// Fields that, once they hold a value, keep it: the node a pod runs on
/// (moving a running pod would leave it running where it was), and a
/// Node's pod range (pods already have addresses from it).
fn set_once(target: &Target, old: &Value, new: &Value) -> ApiResult<()> {
    let fields: &[&str] = match (target.res.group, target.res.kind) {
        ("", "Pod") => &["/spec/nodeName"],
        ("", "Node") => &["/spec/podCIDR", "/spec/podCIDRs"],
        _ => return Ok(()),
    };
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    let mut causes = Vec::new();
    for f in fields {
        let (was, now) = (old.pointer(f), new.pointer(f));
        if !empty(was) && was != now {
            let field = f.trim_start_matches('/').replace('/', ".");
            causes.push(Cause::invalid(
                field,
                now.unwrap_or(&Value::Null),
                "field is immutable once set",
            ));
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        target.res.kind,
        target.res.group,
        old.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(""),
        causes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(path: &str) -> Target {
        super::super::request::parse_path(path).unwrap().unwrap()
    }

    #[test]
    fn a_pods_node_and_a_nodes_range_are_set_once() {
        let pod = target("/api/v1/namespaces/default/pods/p");
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        let on_a = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "a"}});
        let on_b = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "b"}});
        assert!(set_once(&pod, &unbound, &on_a).is_ok());
        assert!(set_once(&pod, &on_a, &on_a).is_ok());
        let e = set_once(&pod, &on_a, &on_b).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(set_once(&pod, &on_a, &unbound).is_err());

        let node = target("/api/v1/nodes/n");
        let none = json!({"metadata": {"name": "n"}, "spec": {}});
        let one = json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}});
        let other = json!({"spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}});
        assert!(set_once(&node, &none, &one).is_ok());
        assert!(set_once(&node, &one, &one).is_ok());
        assert_eq!(set_once(&node, &one, &other).unwrap_err().code, 422);
    }
}
