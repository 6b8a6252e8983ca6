//! TLS and authentication (what each identity may do is in `authz`).
//!
//! On first start the API server makes a CA, a serving certificate and an
//! admin client certificate in `--cert-dir` and writes an admin
//! kubeconfig; later starts reuse them. Clients authenticate with a
//! certificate signed by that CA (CN = user, O = groups) or a bearer token
//! from `--token-auth-file`. Anonymous requests are refused. Node
//! certificates last [`NODE_CERT_DAYS`]; a node renews its own through
//! [`renew_node_certificate`].

mod pki;
mod tls;
mod tokens;

pub use pki::{
    admin_kubeconfig, client_kubeconfig, ensure_ca, ensure_pki, issue, kubelet_client,
    renew_node_certificate, write_private, CertRequest, Pki, NODE_CERT_DAYS,
};
pub use tls::{server_config, user_from_cert};
pub use tokens::{bearer_token, Tokens};

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// The identity of the unauthenticated plain-HTTP test port.
    pub fn admin() -> Self {
        Self {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// For `system:node:NAME` users in `system:nodes`, the node's name.
    pub fn node_name(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.name
                .strip_prefix("system:node:")
                .filter(|n| !n.is_empty())
        } else {
            None
        }
    }
}

/// The identity a connection's client certificate proved, if any.
#[derive(Clone, Debug)]
pub struct ConnUser(pub Option<User>);
