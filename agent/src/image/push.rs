//! Pushing an image from the store to an OCI distribution registry: its
//! config and layer blobs as stored (compressed or not, so their digests
//! stay those the manifest names), then the manifest under the new name.
//! Used to fill a cluster-local registry from an image archive, the way
//! `docker push` fills one from a local image.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::{normalize, ImageStore};

/// Pushes the stored image `source` as `target` (a reference whose
/// registry is where it goes). Returns the manifest digest. Errors are
/// user-facing strings.
pub async fn push(
    store: &ImageStore,
    source: &str,
    target: &str,
    insecure: &[String],
) -> Result<String, String> {
    let image = store
        .resolve(source)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no image {source:?} in the store"))?;
    let target_ref: Reference = normalize(target)
        .parse()
        .map_err(|e| format!("invalid image reference {target:?}: {e}"))?;
    let registry = target_ref.resolve_registry().to_string();
    let read = |digest: &str| -> Result<Vec<u8>, String> {
        let path = store.blob_path(digest).map_err(|e| e.to_string())?;
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let manifest = read(&image.digest)?;
    let doc: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| format!("the stored manifest of {source} is not JSON: {e}"))?;
    let media_type = doc["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    let blobs: Vec<String> = std::iter::once(&doc["config"])
        .chain(doc["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str().map(str::to_string))
        .collect();

    let client = Client::new(ClientConfig {
        protocol: if super::pull::plain_http(&registry, insecure) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    });
    client
        .auth(
            &target_ref,
            &RegistryAuth::Anonymous,
            RegistryOperation::Push,
        )
        .await
        .map_err(|e| format!("{registry}: {e}"))?;
    for digest in &blobs {
        let data = read(digest)?;
        client
            .push_blob(&target_ref, data, digest)
            .await
            .map_err(|e| format!("pushing {digest} to {registry}: {e}"))?;
    }
    let content_type = media_type
        .parse()
        .map_err(|_| format!("the stored manifest's media type {media_type:?} is not a header"))?;
    client
        .push_manifest_raw(&target_ref, manifest, content_type)
        .await
        .map_err(|e| format!("pushing the manifest of {target} to {registry}: {e}"))?;
    Ok(image.digest)
}
