//! The host directories behind a pod's volumes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::Api;
use kube::ResourceExt;

use super::Worker;

impl Worker {
    /// The host directory behind a pod volume.
    pub(super) async fn volume_path(&self, name: &str) -> Result<PathBuf, String> {
        let vol = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == name))
            .ok_or_else(|| format!("volume {name:?} is mounted but not defined"))?;
        let dir = self.pod_dir().join("volumes").join(name);
        if let Some(h) = &vol.host_path {
            return Ok(PathBuf::from(&h.path));
        }
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if vol.empty_dir.is_some() {
            return Ok(dir);
        }
        let ns = self.pod.namespace().unwrap_or_default();
        let files: BTreeMap<String, Vec<u8>> = if let Some(cm) = &vol.config_map {
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(self.env.client.clone(), &ns);
            let obj = api
                .get(&cm.name)
                .await
                .map_err(|e| format!("configmap {:?}: {e}", cm.name))?;
            obj.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(s) = &vol.secret {
            let api: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(self.env.client.clone(), &ns);
            let name = s.secret_name.clone().unwrap_or_default();
            let obj = api
                .get(&name)
                .await
                .map_err(|e| format!("secret {name:?}: {e}"))?;
            obj.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else if vol.downward_api.is_some() {
            let labels = self
                .pod
                .labels()
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                .collect::<String>();
            let annotations = self
                .pod
                .annotations()
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                .collect::<String>();
            vol.downward_api
                .iter()
                .flat_map(|d| d.items.iter().flatten())
                .filter_map(|item| {
                    let path = item.field_ref.as_ref()?.field_path.as_str();
                    let value = match path {
                        "metadata.labels" => labels.clone(),
                        "metadata.annotations" => annotations.clone(),
                        "metadata.name" => self.pod.name_any(),
                        "metadata.namespace" => ns.clone(),
                        "metadata.uid" => self.uid.clone(),
                        _ => return None,
                    };
                    Some((item.path.clone(), value.into_bytes()))
                })
                .collect()
        } else {
            return Err(format!("volume {name:?}: only emptyDir, hostPath, configMap, secret and downwardAPI are supported"));
        };
        for (k, v) in files {
            if k.contains("..") || k.starts_with('/') {
                return Err(format!("volume {name:?}: bad key {k:?}"));
            }
            let p = dir.join(&k);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&p, v).map_err(|e| e.to_string())?;
        }
        Ok(dir)
    }
}
