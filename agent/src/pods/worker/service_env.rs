//! The environment kubelet gives every container about the API server:
//! `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and the
//! Docker-link variables of Service `default/kubernetes`, which in-cluster
//! clients (client-go's `InClusterConfig`, the python client's
//! `load_incluster_config`) read to find the API server.

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

use super::Worker;

/// The variables for Service `name` (Kubernetes' naming: upper case,
/// `-` as `_`), or nothing without a ClusterIP or a port.
pub(super) fn service_env(name: &str, svc: &Service) -> Vec<String> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    else {
        return Vec::new();
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = name.to_uppercase().replace('-', "_");
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.as_deref().unwrap_or("TCP").to_lowercase()
    };
    let mut env = vec![
        format!("{prefix}_SERVICE_HOST={ip}"),
        format!("{prefix}_SERVICE_PORT={}", first.port),
    ];
    for p in ports {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            let n = n.to_uppercase().replace('-', "_");
            env.push(format!("{prefix}_SERVICE_PORT_{n}={}", p.port));
        }
    }
    env.push(format!(
        "{prefix}_PORT={}://{ip}:{}",
        proto(first),
        first.port
    ));
    for p in ports {
        let (proto, port) = (proto(p), p.port);
        let base = format!("{prefix}_PORT_{port}_{}", proto.to_uppercase());
        env.push(format!("{base}={proto}://{ip}:{port}"));
        env.push(format!("{base}_PROTO={proto}"));
        env.push(format!("{base}_PORT={port}"));
        env.push(format!("{base}_ADDR={ip}"));
    }
    env
}

impl Worker {
    /// The API server's variables, from Service `default/kubernetes`; none
    /// when it cannot be read (the container still starts, as in-cluster
    /// clients are the exception).
    pub(super) async fn api_server_env(&self) -> Vec<String> {
        let api: Api<Service> = Api::namespaced(self.env.client.clone(), "default");
        match api.get_opt("kubernetes").await {
            Ok(Some(svc)) => service_env("kubernetes", &svc),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!("reading Service default/kubernetes for container variables: {e}");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_service_gives_the_in_cluster_variables() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}
        }))
        .unwrap();
        assert_eq!(
            service_env("kubernetes", &svc),
            [
                "KUBERNETES_SERVICE_HOST=10.96.0.1",
                "KUBERNETES_SERVICE_PORT=443",
                "KUBERNETES_SERVICE_PORT_HTTPS=443",
                "KUBERNETES_PORT=tcp://10.96.0.1:443",
                "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
                "KUBERNETES_PORT_443_TCP_PROTO=tcp",
                "KUBERNETES_PORT_443_TCP_PORT=443",
                "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
            ]
        );
    }

    #[test]
    fn a_headless_or_portless_service_gives_nothing() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "spec": spec}))
                .unwrap()
        };
        assert!(service_env(
            "x",
            &svc(serde_json::json!({"clusterIP": "None",
            "ports": [{"port": 80}]}))
        )
        .is_empty());
        assert!(service_env("x", &svc(serde_json::json!({"clusterIP": "10.96.0.5"}))).is_empty());
    }
}
