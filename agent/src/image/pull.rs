//! Pulling images from an OCI distribution registry (oci-client) into the
//! store: the manifest (a platform's from an index), the config and the
//! layers, each verified by digest, unpacked once.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::{normalize, Image, ImageStore};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Registries reached over plain HTTP: loopback ones (as Docker does) and
/// those named with `--insecure-registry`.
pub(super) fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    insecure.iter().any(|r| r == registry)
        || host == "localhost"
        || host.starts_with("127.")
        || host == "[::1]"
}

/// Pulls `reference` into `store`. Errors are user-facing strings (they end
/// up in the pod's status and events).
pub async fn pull(
    store: &ImageStore,
    reference: &str,
    auth: Option<(String, String)>,
    insecure: &[String],
) -> Result<Image, String> {
    let normalized = normalize(reference);
    let r: Reference = normalized
        .parse()
        .map_err(|e| format!("invalid image reference {reference:?}: {e}"))?;
    let registry = r.resolve_registry().to_string();
    let protocol = if plain_http(&registry, insecure) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let auth = match auth {
        Some((u, p)) => RegistryAuth::Basic(u, p),
        None => RegistryAuth::Anonymous,
    };
    let fetch = |r: Reference| {
        let client = &client;
        let auth = &auth;
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                client.pull_manifest_raw(&r, auth, MANIFEST_TYPES),
            )
            .await
            .map_err(|_| format!("pulling the manifest of {r}: timed out"))?
            .map_err(|e| format!("pulling the manifest of {r}: {e}"))
        }
    };
    let (mut raw, _) = fetch(r.clone()).await?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| format!("the manifest of {normalized} is not JSON: {e}"))?;
    let mut image_ref = r.clone();
    if let Some(list) = manifest["manifests"].as_array() {
        // An index: this node's platform.
        let arch = crate::node::machine::arch();
        let d = list
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| format!("{normalized} has no image for linux/{arch}"))?;
        image_ref =
            Reference::with_digest(registry.clone(), r.repository().to_string(), d.to_string());
        raw = fetch(image_ref.clone()).await?.0;
        manifest = serde_json::from_slice(&raw)
            .map_err(|e| format!("the manifest of {normalized} is not JSON: {e}"))?;
    }
    let descriptors: Vec<OciDescriptor> = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten())
        .map(|d| OciDescriptor {
            media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: d["digest"].as_str().unwrap_or_default().to_string(),
            size: d["size"].as_i64().unwrap_or(0),
            ..Default::default()
        })
        .collect();
    let ingest = store.ingest();
    for d in &descriptors {
        if ingest.has_blob(&d.digest) {
            continue;
        }
        let mut buf: Vec<u8> = Vec::new();
        client
            .pull_blob(&image_ref, d, &mut buf)
            .await
            .map_err(|e| format!("pulling {} of {normalized}: {e}", d.digest))?;
        ingest
            .put_blob(&d.digest, &buf[..])
            .map_err(|e| format!("storing {} of {normalized}: {e}", d.digest))?;
    }
    let image = tokio::task::block_in_place(|| ingest.commit(&normalized, &raw))
        .map_err(|e| format!("unpacking {normalized}: {e}"))?;
    Ok(image)
}

/// Credentials for `registry` from dockerconfigjson secrets.
pub fn auth_from_secrets(
    registry: &str,
    secrets: &[k8s_openapi::api::core::v1::Secret],
) -> Option<(String, String)> {
    use base64::Engine;
    for s in secrets {
        let data = s.data.as_ref()?;
        let Some(cfg) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&cfg.0) else {
            continue;
        };
        let auths = if v.get("auths").is_some() {
            &v["auths"]
        } else {
            &v
        };
        for (host, entry) in auths.as_object().into_iter().flatten() {
            let h = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            if h != registry && !(registry == "docker.io" && h.contains("docker.io")) {
                continue;
            }
            if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
                return Some((u.to_string(), p.to_string()));
            }
            if let Some(a) = entry["auth"].as_str() {
                let decoded = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
                let text = String::from_utf8(decoded).ok()?;
                let (u, p) = text.split_once(':')?;
                return Some((u.to_string(), p.to_string()));
            }
        }
    }
    None
}

/// The registry host of a reference, as credentials are keyed.
pub fn registry_of(reference: &str) -> String {
    normalize(reference)
        .parse::<Reference>()
        .map(|r| r.resolve_registry().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(plain_http("127.0.0.1:5000", &[]));
        assert!(plain_http("localhost:5000", &[]));
        assert!(!plain_http("registry.example.com", &[]));
        assert!(plain_http(
            "registry.example.com",
            &["registry.example.com".into()]
        ));
    }

    #[test]
    fn credentials_from_a_dockerconfigjson_secret() {
        use base64::Engine;
        let cfg = serde_json::json!({"auths": {"127.0.0.1:5000": {"auth": base64::engine::general_purpose::STANDARD.encode("joe:pw")}}});
        let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(cfg.to_string())},
        }))
        .unwrap();
        assert_eq!(
            auth_from_secrets("127.0.0.1:5000", std::slice::from_ref(&s)),
            Some(("joe".into(), "pw".into()))
        );
        assert_eq!(auth_from_secrets("other:5000", &[s]), None);
    }
}
