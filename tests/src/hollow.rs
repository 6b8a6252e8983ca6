//! A control plane with the scheduler, the controller-manager and hollow
//! nodes: enough to run workload controllers end to end without containers.
//! The scheduler and controller-manager connect as `system:kube-scheduler`
//! and `system:kube-controller-manager`.
//! A pod annotated `hollow.kestrel.dev/exit-code: "N"` finishes there with
//! that exit code; any other pod keeps running.

use std::time::Duration;

use crate::cluster::ControlPlane;
use crate::kubectl::Kubectl;
use crate::process::{wait_for, Guarded};

/// The running cluster; everything stops on drop.
pub struct HollowCluster {
    /// The API server and etcd.
    pub cp: ControlPlane,
    /// kubectl pointed at it as an administrator.
    pub k: Kubectl,
    _parts: Vec<Guarded>,
}

impl HollowCluster {
    /// Starts the control plane and `n` hollow nodes, and waits until all registered.
    pub fn start(n: usize) -> Self {
        // The components run as their own least-privilege users, so a
        // controller that needs a grant its role lacks fails here.
        let cp = ControlPlane::start_with_component_identities(&[]).expect("control plane starts");
        let k = cp.kubectl();
        let count = n.to_string();
        let parts = vec![
            cp.component("scheduler", &["scheduler"])
                .expect("scheduler starts"),
            cp.component("controller-manager", &["controller-manager"])
                .expect("controller-manager starts"),
            cp.component(
                "hollow",
                &[
                    "hollow-nodes",
                    "--name-prefix",
                    "hollow",
                    "--count",
                    &count,
                    "--lease-interval-seconds",
                    "1",
                ],
            )
            .expect("hollow nodes start"),
        ];
        let ready = wait_for(Duration::from_secs(30), || {
            let nodes = k.get_json(&["nodes"]);
            (nodes["items"].as_array().map(Vec::len) == Some(n)).then_some(())
        });
        assert!(ready.is_some(), "{n} hollow nodes did not register");
        HollowCluster {
            cp,
            k,
            _parts: parts,
        }
    }
}
