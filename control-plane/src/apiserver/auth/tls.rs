//! The TLS side of a connection: our serving certificate, and the user a
//! client certificate names.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::{Pki, User};

/// The rustls server configuration: our serving certificate, and client
/// certificates verified against our CA but not required (tokens work too).
pub fn server_config(pki: &Pki) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read_certs =
        |p: PathBuf| -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
            let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(rustls_pemfile::certs(&mut data.as_slice()).collect::<Result<_, _>>()?)
        };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(pki.ca_cert())? {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let key_data = std::fs::read(pki.serving_key())?;
    let key = rustls_pemfile::private_key(&mut key_data.as_slice())?
        .ok_or_else(|| anyhow::anyhow!("no private key in {}", pki.serving_key().display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(pki.serving_cert())?, key)?;
    // HTTP/1.1 only: exec and port-forward upgrade the connection.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The user a verified client certificate names (CN = user, O = groups).
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}
