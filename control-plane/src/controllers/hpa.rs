//! The HorizontalPodAutoscaler controller, for resource metrics (CPU and
//! memory, as utilization of the pods' requests or as an average value).
//! Every 15 s each autoscaler reads its target's scale, the running pods
//! its selector picks and their metrics.k8s.io usage, and computes the
//! replicas as upstream does: `ceil(current pods × usage ÷ target)`, left
//! alone within a 10% tolerance, the highest of several metrics, no faster
//! up than doubling (or 4 pods) per round, and never lower than the highest
//! recommendation of the scale-down stabilization window (default 300 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apimachinery::selectors::LabelSelector;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::context::{Context, Error, Result};

const SYNC: Duration = Duration::from_secs(15);
const TOLERANCE: f64 = 0.1;
const DEFAULT_SCALE_DOWN_WINDOW: u64 = 300;

/// Each autoscaler's recent recommendations, newest last.
type History = HashMap<(String, String), Vec<(Instant, i32)>>;

pub async fn run(ctx: Arc<Context>) {
    let api: Api<HorizontalPodAutoscaler> = Api::all(ctx.client.clone());
    let mut history = History::new();
    let mut tick = tokio::time::interval(SYNC);
    loop {
        tick.tick().await;
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listing HorizontalPodAutoscalers: {e}");
                continue;
            }
        };
        history.retain(|(ns, name), _| {
            list.items
                .iter()
                .any(|h| h.namespace().as_deref() == Some(ns) && h.name_any() == *name)
        });
        for hpa in &list.items {
            if let Err(e) = reconcile(&ctx, hpa, &mut history).await {
                tracing::warn!(
                    "HorizontalPodAutoscaler {}/{}: {e}",
                    hpa.namespace().unwrap_or_default(),
                    hpa.name_any()
                );
            }
        }
    }
}

/// The scale subresource's API of what `hpa` scales.
fn target_api(
    ctx: &Context,
    ns: &str,
    hpa: &HorizontalPodAutoscaler,
) -> Option<Api<DynamicObject>> {
    let r = &hpa.spec.as_ref()?.scale_target_ref;
    let (group, plural) = match r.kind.as_str() {
        "Deployment" => ("apps", "deployments"),
        "ReplicaSet" => ("apps", "replicasets"),
        "StatefulSet" => ("apps", "statefulsets"),
        "ReplicationController" => ("", "replicationcontrollers"),
        _ => return None,
    };
    let api_version = if group.is_empty() {
        "v1".into()
    } else {
        format!("{group}/v1")
    };
    let ar = ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version,
        kind: r.kind.clone(),
        plural: plural.into(),
    };
    Some(Api::namespaced_with(ctx.client.clone(), ns, &ar))
}

/// One metric's verdict: the replicas it asks for and what it measured.
struct Measured {
    replicas: i32,
    status: Value,
}

async fn reconcile(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    history: &mut History,
) -> Result<()> {
    let ns = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(spec) = hpa.spec.as_ref() else {
        return Ok(());
    };
    let Some(target) = target_api(ctx, &ns, hpa) else {
        let msg = format!(
            "the HPA controller cannot scale a {}",
            spec.scale_target_ref.kind
        );
        return write_status(
            &api,
            &name,
            json!({"conditions": [condition("AbleToScale", false, "FailedGetScale", &msg)]}),
        )
        .await;
    };
    let scale = target.get_scale(&spec.scale_target_ref.name).await?;
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status_replicas = scale.status.as_ref().map_or(0, |s| s.replicas);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    if current == 0 {
        // Scaled to zero by hand: autoscaling is off until someone scales up.
        let msg = "scaling is disabled since the replica count of the target is zero";
        return write_status(
            &api,
            &name,
            json!({"currentReplicas": status_replicas, "desiredReplicas": 0,
            "conditions": [condition("ScalingActive", false, "ScalingDisabled", msg)]}),
        )
        .await;
    }
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let parsed = LabelSelector::parse(&selector)
        .map_err(|e| Error::Other(format!("selector {selector:?}: {e}")))?;
    // The target's running pods, as the controller counts them.
    let pods: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| parsed.matches_labels(p.labels()))
        .map(|p| (**p).clone())
        .collect();
    let usage = pod_usage(ctx, &ns, &selector).await?;
    let mut measured = Vec::new();
    let mut failure = None;
    for m in spec.metrics.iter().flatten() {
        let Some(r) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
            continue;
        };
        match measure(&r.name, &r.target, &pods, &usage, current) {
            Ok(x) => measured.push(x),
            Err(why) => failure = Some(why),
        }
    }
    let Some(wanted) = measured.iter().map(|m| m.replicas).max() else {
        let why = failure.unwrap_or_else(|| "no resource metric to act on".into());
        return write_status(&api, &name, json!({"currentReplicas": status_replicas, "desiredReplicas": current,
            "conditions": [condition("AbleToScale", true, "SucceededGetScale", "the HPA controller was able to get the target's current scale"),
                           condition("ScalingActive", false, "FailedGetResourceMetric", &why)]})).await;
    };
    // Upstream's default scale-up policy: at most double, or 4 pods more.
    let up_limit = (current * 2).max(current + 4);
    let mut desired = wanted.min(up_limit).clamp(min, max);
    let window = spec
        .behavior
        .as_ref()
        .and_then(|b| b.scale_down.as_ref())
        .and_then(|d| d.stabilization_window_seconds)
        .map_or(DEFAULT_SCALE_DOWN_WINDOW, |s| s.max(0) as u64);
    let now = Instant::now();
    let recent = history.entry((ns.clone(), name.clone())).or_default();
    recent.push((now, desired));
    recent
        .retain(|(t, _)| now.duration_since(*t) <= Duration::from_secs(window.max(SYNC.as_secs())));
    if desired < current {
        // Never below what the window recommended: a dip does not scale down.
        let floor = recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(window))
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(desired);
        desired = floor.min(current);
    }
    let mut status = json!({
        "currentReplicas": status_replicas,
        "desiredReplicas": desired,
        "currentMetrics": measured.iter().map(|m| m.status.clone()).collect::<Vec<_>>(),
        "conditions": [
            condition("AbleToScale", true, "SucceededRescale", "the HPA controller was able to update the target scale"),
            condition("ScalingActive", true, "ValidMetricFound", "the HPA was able to successfully calculate a replica count from cpu resource utilization"),
            condition("ScalingLimited", wanted != desired, if wanted > max { "TooManyReplicas" } else if wanted < min { "TooFewReplicas" } else { "DesiredWithinRange" },
                      "the desired count is within the acceptable range"),
        ],
    });
    if desired != current {
        target
            .patch_scale(
                &spec.scale_target_ref.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": desired}})),
            )
            .await?;
        status["lastScaleTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
        tracing::info!("HorizontalPodAutoscaler {ns}/{name}: {current} → {desired} replicas");
    } else if let Some(last) = hpa.status.as_ref().and_then(|s| s.last_scale_time.as_ref()) {
        status["lastScaleTime"] = json!(last.0.to_string());
    }
    write_status(&api, &name, status).await
}

/// Container usage by (pod, resource) from metrics.k8s.io: CPU in
/// millicores, memory in bytes.
async fn pod_usage(ctx: &Context, ns: &str, selector: &str) -> Result<HashMap<String, (i64, i64)>> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    let mut out = HashMap::new();
    for item in list.items {
        let mut cpu = 0;
        let mut memory = 0;
        for c in item.data["containers"].as_array().into_iter().flatten() {
            cpu += c["usage"]["cpu"]
                .as_str()
                .and_then(|q| apimachinery::quantity::cpu_millis(q).ok())
                .unwrap_or(0);
            memory += c["usage"]["memory"]
                .as_str()
                .and_then(|q| apimachinery::quantity::value(q).ok())
                .unwrap_or(0);
        }
        out.insert(item.name_any(), (cpu, memory));
    }
    Ok(out)
}

/// The replicas one resource metric asks for.
fn measure(
    resource: &str,
    target: &k8s_openapi::api::autoscaling::v2::MetricTarget,
    pods: &[Pod],
    usage: &HashMap<String, (i64, i64)>,
    current: i32,
) -> Result<Measured, String> {
    let pick = |u: &(i64, i64)| if resource == "cpu" { u.0 } else { u.1 };
    let quantity = |q: &str| -> i64 {
        if resource == "cpu" {
            apimachinery::quantity::cpu_millis(q).unwrap_or(0)
        } else {
            apimachinery::quantity::value(q).unwrap_or(0)
        }
    };
    let mut used = 0i64;
    let mut requested = 0i64;
    let mut counted = 0i64;
    for pod in pods {
        let Some(u) = usage.get(&pod.name_any()) else {
            continue;
        };
        counted += 1;
        used += pick(u);
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .map(|q| quantity(&q.0));
            match request {
                Some(r) => requested += r,
                None if target.type_ == "Utilization" => {
                    return Err(format!(
                        "missing request for {resource} in container {} of Pod {}",
                        c.name,
                        pod.name_any()
                    ));
                }
                None => {}
            }
        }
    }
    if counted == 0 {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, status) = match (
        target.type_.as_str(),
        target.average_utilization,
        &target.average_value,
    ) {
        ("Utilization", Some(want), _) if requested > 0 => {
            let utilization = used * 100 / requested;
            let average = used / counted;
            let shown = if resource == "cpu" {
                format!("{average}m")
            } else {
                average.to_string()
            };
            (
                utilization as f64 / f64::from(want),
                json!({"type": "Resource", "resource": {"name": resource,
                    "current": {"averageUtilization": utilization, "averageValue": shown}}}),
            )
        }
        ("AverageValue", _, Some(want)) => {
            let average = used / counted;
            let want = quantity(&want.0).max(1);
            let shown = if resource == "cpu" {
                format!("{average}m")
            } else {
                average.to_string()
            };
            (
                average as f64 / want as f64,
                json!({"type": "Resource", "resource": {"name": resource, "current": {"averageValue": shown}}}),
            )
        }
        _ => return Err(format!("unsupported target for {resource}")),
    };
    let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * counted as f64).ceil() as i32
    };
    Ok(Measured { replicas, status })
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
    })
}

async fn write_status(api: &Api<HorizontalPodAutoscaler>, name: &str, status: Value) -> Result<()> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::MetricTarget;

    fn pod(name: &str, cpu_request: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [
            {"name": "main", "resources": {"requests": {"cpu": cpu_request}}}]}}))
        .unwrap()
    }

    #[test]
    fn replicas_follow_utilization_with_a_tolerance() {
        let target = MetricTarget {
            type_: "Utilization".into(),
            average_utilization: Some(50),
            ..Default::default()
        };
        let pods = [pod("a", "100m"), pod("b", "100m")];
        let usage =
            |a: i64, b: i64| HashMap::from([("a".to_string(), (a, 0)), ("b".to_string(), (b, 0))]);
        // 150% of the requests against 50%: three times the pods.
        let m = measure("cpu", &target, &pods, &usage(150, 150), 2).unwrap();
        assert_eq!(m.replicas, 6);
        assert_eq!(m.status["resource"]["current"]["averageUtilization"], 150);
        // 52% is within 10% of 50%: no change.
        assert_eq!(
            measure("cpu", &target, &pods, &usage(52, 52), 2)
                .unwrap()
                .replicas,
            2
        );
        // Idle: one pod is enough (the minimum clamps it later).
        assert_eq!(
            measure("cpu", &target, &pods, &usage(1, 1), 2)
                .unwrap()
                .replicas,
            1
        );
        // A pod without a request makes utilization meaningless.
        let no_request: Pod = serde_json::from_value(
            json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "main"}]}}),
        )
        .unwrap();
        assert!(measure("cpu", &target, &[no_request], &usage(1, 1), 1).is_err());
    }
}
