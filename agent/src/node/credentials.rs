//! The node's client certificate, renewed before it lapses (as kubelet's
//! certificate rotation does): two thirds into its life the agent makes a
//! new key, sends a request for it to the API server (which always issues
//! for the node's own name), writes the answer into its kubeconfig and
//! presents it on every new connection from then on. A node that keeps
//! running never needs its credentials made again by hand.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use base64::Engine;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde_json::Value;

use super::renewal::{write_atomically, Validity};

/// Where the API server issues a node its renewed certificate.
pub const RENEW_PATH: &str = "/kestrel/v1/node-client-certificate";
/// Wait after a failed renewal before the next try.
const RETRY: Duration = Duration::from_secs(60);

/// The certificate and key the agent presents, replaced on renewal.
#[derive(Debug)]
pub struct Rotating {
    current: RwLock<Arc<CertifiedKey>>,
    /// PEM of the certificate in use, for its validity.
    cert_pem: RwLock<String>,
}

impl Rotating {
    /// From a certificate and its key, both PEM.
    pub fn new(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        Ok(Self {
            current: RwLock::new(Arc::new(certified(cert_pem, key_pem)?)),
            cert_pem: RwLock::new(cert_pem.to_string()),
        })
    }

    /// Presents `cert_pem` and `key_pem` from the next connection on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let new = Arc::new(certified(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        *self.cert_pem.write().unwrap_or_else(|p| p.into_inner()) = cert_pem.to_string();
        Ok(())
    }

    fn validity(&self) -> anyhow::Result<Validity> {
        let pem = self.cert_pem.read().unwrap_or_else(|p| p.into_inner());
        Validity::from_pem(pem.as_bytes())
    }
}

impl ResolvesClientCert for Rotating {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> anyhow::Result<CertifiedKey> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the client certificate is not PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no client certificate");
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the client key is not PEM")?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("the client key's type is not supported")?;
    Ok(CertifiedKey::new(certs, key))
}

/// The client certificate and key (PEM) of the kubeconfig's current user,
/// when it names them inline (as node kubeconfigs do).
pub fn inline_credentials(kubeconfig: &Value) -> Option<(String, String)> {
    let user = current_user(kubeconfig)?;
    let decode = |field: &str| {
        let b64 = user.get(field)?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    Some((
        decode("client-certificate-data")?,
        decode("client-key-data")?,
    ))
}

fn current_user(kubeconfig: &Value) -> Option<&Value> {
    let i = current_user_index(kubeconfig)?;
    kubeconfig.get("users")?.get(i)?.get("user")
}

/// Where the current context's user sits in `users`.
fn current_user_index(kubeconfig: &Value) -> Option<usize> {
    let context = kubeconfig.get("current-context")?.as_str()?;
    let user = kubeconfig
        .get("contexts")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(context))?
        .pointer("/context/user")?
        .as_str()?;
    kubeconfig
        .get("users")?
        .as_array()?
        .iter()
        .position(|u| u.get("name").and_then(Value::as_str) == Some(user))
}

/// `kubeconfig` with the current user's certificate and key replaced.
pub fn with_credentials(mut kubeconfig: Value, cert_pem: &str, key_pem: &str) -> Option<Value> {
    let i = current_user_index(&kubeconfig)?;
    let entry = kubeconfig
        .get_mut("users")?
        .get_mut(i)?
        .get_mut("user")?
        .as_object_mut()?;
    let b64 = |s: &str| Value::from(base64::engine::general_purpose::STANDARD.encode(s));
    entry.insert("client-certificate-data".into(), b64(cert_pem));
    entry.insert("client-key-data".into(), b64(key_pem));
    Some(kubeconfig)
}

/// Reads a kubeconfig (YAML or JSON) as JSON.
pub fn read_kubeconfig(path: &Path) -> anyhow::Result<Value> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Ok(serde_json::to_value(kc)?)
}

/// A kube client that presents whatever `certs` holds when it connects,
/// so a renewed certificate is used without restarting anything.
pub fn rotating_client(config: kube::Config, certs: Arc<Rotating>) -> anyhow::Result<kube::Client> {
    use kube::client::ConfigExt;
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = certs;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let http_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, kube::client::Body>(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Renews the certificate in `certs` whenever it is due, for as long as
/// the agent runs, and keeps `kubeconfig` holding the one in use so a
/// restarted agent starts with it.
pub async fn renew_forever(
    client: kube::Client,
    node: String,
    kubeconfig: PathBuf,
    certs: Arc<Rotating>,
) {
    loop {
        let wait = match certs.validity() {
            Ok(v) => v.wait_from(SystemTime::now()),
            Err(e) => {
                tracing::warn!("reading the node certificate's validity: {e:#}");
                return;
            }
        };
        tokio::time::sleep(wait).await;
        match renew_once(&client, &node, &kubeconfig, &certs).await {
            Ok(()) => {
                let until = certs.validity().map(|v| v.not_after).unwrap_or_default();
                tracing::info!(not_after = until, "renewed the node's client certificate");
            }
            Err(e) => {
                tracing::warn!("renewing the node's client certificate: {e:#}; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn renew_once(
    client: &kube::Client,
    node: &str,
    kubeconfig: &Path,
    certs: &Rotating,
) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr = params.serialize_request(&key)?.pem()?;
    let request = http::Request::post(RENEW_PATH)
        .header(http::header::CONTENT_TYPE, "application/pkcs10")
        .body(csr.into_bytes())?;
    let cert = client
        .request_text(request)
        .await
        .context("the API server refused the request")?;
    let key_pem = key.serialize_pem();
    // Checked before anything is replaced: a bad answer keeps the old one.
    certs.replace(&cert, &key_pem)?;
    let kc = read_kubeconfig(kubeconfig)?;
    let kc = with_credentials(kc, &cert, &key_pem)
        .context("the kubeconfig has no current user to update")?;
    write_atomically(kubeconfig, serde_json::to_string_pretty(&kc)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["node".into()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn the_current_users_inline_credentials_are_read_and_replaced() {
        let (cert, key) = pair();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kc = json!({
            "current-context": "node",
            "contexts": [{"name": "other", "context": {"user": "admin"}},
                         {"name": "node", "context": {"user": "system:node:n1"}}],
            "users": [{"name": "admin", "user": {"token": "t"}},
                      {"name": "system:node:n1", "user": {
                          "client-certificate-data": b64(&cert),
                          "client-key-data": b64(&key)}}],
        });
        assert_eq!(inline_credentials(&kc), Some((cert.clone(), key.clone())));
        let (cert2, key2) = pair();
        let updated = with_credentials(kc.clone(), &cert2, &key2).unwrap();
        assert_eq!(inline_credentials(&updated), Some((cert2, key2)));
        assert_eq!(updated["users"][0], kc["users"][0], "other users untouched");
        assert_eq!(inline_credentials(&json!({"current-context": "x"})), None);
    }

    #[test]
    fn a_replaced_certificate_is_what_the_next_connection_presents() {
        let (cert, key) = pair();
        let rotating = Rotating::new(&cert, &key).unwrap();
        let before = rotating.resolve(&[], &[]).unwrap();
        let (cert2, key2) = pair();
        rotating.replace(&cert2, &key2).unwrap();
        let after = rotating.resolve(&[], &[]).unwrap();
        assert_ne!(before.cert, after.cert);
        assert!(rotating.replace("not a certificate", &key2).is_err());
        assert_eq!(rotating.resolve(&[], &[]).unwrap().cert, after.cert);
    }
}
