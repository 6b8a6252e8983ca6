//! The pod status Kubernetes users read: phase, conditions and container
//! states, patched when it changes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::{now, Run, State, Worker};

impl Worker {
    pub(super) fn status(&self) -> Value {
        let policy = self.restart_policy();
        let apps: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| !r.init && !r.ephemeral)
            .collect();
        let inits_done = self
            .runs
            .iter()
            .filter(|r| r.init)
            .all(|r| matches!(r.state, State::Terminated { code: 0, .. }));
        let running = apps
            .iter()
            .filter(|r| matches!(r.state, State::Running { .. }))
            .count();
        let all_started_once = apps.iter().all(|r| !matches!(r.state, State::Waiting { ref reason, .. } if reason == "ContainerCreating" || reason == "ErrImagePull" || reason == "ImagePullBackOff" || reason == "CreateContainerError"));
        let terminal: Vec<&&Run> = apps
            .iter()
            .filter(|r| matches!(r.state, State::Terminated { .. }) && r.next_start.is_none())
            .collect();
        let init_failed = self.runs.iter().any(|r| {
            r.init
                && matches!(r.state, State::Terminated { code, .. } if code != 0)
                && r.next_start.is_none()
        });
        let phase = if init_failed {
            "Failed"
        } else if !apps.is_empty() && terminal.len() == apps.len() {
            if terminal
                .iter()
                .all(|r| matches!(r.state, State::Terminated { code: 0, .. }))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if running > 0 || (inits_done && all_started_once && policy != "Never") {
            "Running"
        } else {
            "Pending"
        };
        let ready = running == apps.len() && !apps.is_empty() && apps.iter().all(|r| r.ready);
        let ts = now();
        let old = self.pod.status.clone().unwrap_or_default();
        let since = |t: &str, status: &str| {
            old.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == t && c.status == status)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| ts.clone())
        };
        let cond = |t: &str, ok: bool| {
            let s = if ok { "True" } else { "False" };
            json!({"type": t, "status": s, "lastTransitionTime": since(t, s)})
        };
        let state_json = |s: &State| match s {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            State::Running { started } => json!({"running": {"startedAt": started}}),
            State::Terminated {
                code,
                signal,
                reason,
                started,
                finished,
            } => {
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished});
                if let Some(sig) = signal {
                    t["signal"] = json!(sig);
                }
                json!({"terminated": t})
            }
        };
        let container_status = |r: &Run| {
            let mut v = json!({
                "name": r.name, "image": r.image, "imageID": r.image_id,
                "ready": matches!(r.state, State::Running { .. }) && r.ready,
                "started": matches!(r.state, State::Running { .. }),
                "restartCount": r.restarts,
                "state": state_json(&r.state),
                "lastState": r.last.as_ref().map(state_json).unwrap_or_else(|| json!({})),
            });
            if let Some(id) = &r.id {
                v["containerID"] = json!(format!("libcontainer://{id}"));
            }
            v
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", self.sandbox.exists()),
                cond("Initialized", inits_done),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", true),
            ],
            "containerStatuses": apps.iter().map(|r| container_status(r)).collect::<Vec<_>>(),
            "qosClass": old.qos_class.clone().unwrap_or_else(|| "BestEffort".into()),
        });
        if self.runs.iter().any(|r| r.init) {
            status["initContainerStatuses"] = json!(self
                .runs
                .iter()
                .filter(|r| r.init)
                .map(container_status)
                .collect::<Vec<_>>());
        }
        if self.runs.iter().any(|r| r.ephemeral) {
            status["ephemeralContainerStatuses"] = json!(self
                .runs
                .iter()
                .filter(|r| r.ephemeral)
                .map(|r| {
                    let mut v = container_status(r);
                    // Ephemeral containers are never ready.
                    v["ready"] = json!(false);
                    v
                })
                .collect::<Vec<_>>());
        }
        if let Some(why) = &self.refused {
            status["phase"] = json!("Failed");
            status["reason"] = json!("InvalidVolume");
            status["message"] = json!(why);
        }
        if let Some(t) = &self.start_time {
            status["startTime"] = json!(t);
        }
        if let Some(ep) = &self.endpoint {
            status["podIP"] = json!(ep.ip.to_string());
            status["podIPs"] = json!([{"ip": ep.ip.to_string()}]);
        }
        if let Some(ip) = &self.env.node_ip {
            status["hostIP"] = json!(ip);
            status["hostIPs"] = json!([{"ip": ip}]);
        }
        status
    }

    /// Patches the pod's status when it changed.
    pub(super) async fn report(&mut self) {
        let status = self.status();
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        // First seen running by this agent (an adopted pod was running
        // already and says nothing about start-up).
        if status["phase"] == "Running" && !self.start_seen {
            self.start_seen = true;
            if let Some(created) = &self.pod.metadata.creation_timestamp {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
                if let Ok(d) = std::time::Duration::try_from(age) {
                    crate::metrics::METRICS.pod_start.observe(d);
                }
            }
        }
        let api: Api<Pod> = Api::namespaced(
            self.env.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(p) => {
                self.pod = Arc::new(p);
                self.reported = Some(status);
            }
            Err(e) => tracing::debug!("reporting pod {}: {e}", self.pod.name_any()),
        }
    }
}
