//! The host directories behind a pod's volumes. configMap, secret,
//! downwardAPI and projected volumes (with ServiceAccount tokens, see
//! [`super::token`]) are written by the atomic writer and mounted
//! read-only; emptyDir, hostPath and claims' volumes (hostPath and local)
//! are directories as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Secret,
    Volume,
};
use kube::api::Api;
use kube::ResourceExt;

use super::Worker;
use crate::pods::atomic_writer::{self, File};

/// Kubernetes' defaultMode when the pod gives none.
const DEFAULT_MODE: i32 = 0o644;

/// A volume's host directory, and whether containers must see it read-only
/// whatever their mount says.
pub(super) struct Source {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The first volume of the pod whose name is not a DNS label, with why.
/// Volume names become directory names on the node.
pub(super) fn invalid_volume(volumes: &[Volume]) -> Option<String> {
    volumes.iter().find_map(|v| {
        (!atomic_writer::is_dns_label(&v.name)).then(|| {
            format!(
                "volume name {:?} is not a DNS label (lowercase letters, digits and '-', at most 63)",
                v.name
            )
        })
    })
}

/// The files `items` select from `data` (all of it without items); a key
/// missing from `data` is an error unless the source is optional.
fn select(
    what: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: i32,
    optional: bool,
) -> Result<Vec<File>, String> {
    let Some(items) = items else {
        return Ok(data
            .into_iter()
            .map(|(path, data)| File {
                path,
                data,
                mode: mode as u32,
            })
            .collect());
    };
    let mut out = Vec::new();
    for it in items {
        match data.get(&it.key) {
            Some(d) => out.push(File {
                path: it.path.clone(),
                data: d.clone(),
                mode: it.mode.unwrap_or(mode) as u32,
            }),
            None if optional => {}
            None => return Err(format!("{what} has no key {:?}", it.key)),
        }
    }
    Ok(out)
}

impl Worker {
    /// The host directory behind a pod volume, written afresh for the
    /// volumes the agent fills.
    pub(super) async fn volume_path(&self, name: &str) -> Result<Source, String> {
        let vol = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == name))
            .ok_or_else(|| format!("volume {name:?} is mounted but not defined"))?;
        if !atomic_writer::is_dns_label(name) {
            return Err(format!("volume name {name:?} is not a DNS label"));
        }
        if let Some(h) = &vol.host_path {
            return Ok(Source {
                path: PathBuf::from(&h.path),
                read_only: false,
            });
        }
        if let Some(c) = &vol.persistent_volume_claim {
            return self
                .claim_path(&c.claim_name, c.read_only == Some(true))
                .await;
        }
        let dir = self.pod_dir().join("volumes").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if vol.empty_dir.is_some() {
            return Ok(Source {
                path: dir,
                read_only: false,
            });
        }
        self.write_volume(vol, dir.clone()).await?;
        Ok(Source {
            path: dir,
            read_only: true,
        })
    }

    /// The host directory of a claim's volume: a hostPath or local volume,
    /// made when its type is DirectoryOrCreate (local-path volumes). An
    /// unbound claim is an error, so the pod waits and tries again.
    async fn claim_path(&self, claim: &str, read_only: bool) -> Result<Source, String> {
        let ns = self.pod.namespace().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.env.client.clone(), &ns);
        let pvc = claims
            .get(claim)
            .await
            .map_err(|e| format!("persistentvolumeclaim {claim:?}: {e}"))?;
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound yet"))?;
        let pvs: Api<PersistentVolume> = Api::all(self.env.client.clone());
        let pv = pvs
            .get(&volume)
            .await
            .map_err(|e| format!("persistentvolume {volume:?}: {e}"))?;
        let spec = pv.spec.unwrap_or_default();
        let (path, create) = if let Some(h) = spec.host_path {
            (h.path, h.type_.as_deref() == Some("DirectoryOrCreate"))
        } else if let Some(l) = spec.local {
            (l.path, false)
        } else {
            return Err(format!(
                "persistentvolume {volume:?}: only hostPath and local volumes are supported"
            ));
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("persistentvolume {volume:?}: path is not absolute"));
        }
        if create {
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(Source { path, read_only })
    }

    /// Writes the files of a configMap, secret, downwardAPI or projected
    /// volume into `dir` as one new generation.
    pub(super) async fn write_volume(&self, vol: &Volume, dir: PathBuf) -> Result<(), String> {
        let files = self.volume_files(vol).await?;
        let name = vol.name.clone();
        tokio::task::spawn_blocking(move || atomic_writer::write(&dir, &files))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("volume {name:?}: {e}"))
    }

    /// The files of a configMap, secret, downwardAPI or projected volume.
    async fn volume_files(&self, vol: &Volume) -> Result<Vec<File>, String> {
        let name = &vol.name;
        if let Some(cm) = &vol.config_map {
            let mode = cm.default_mode.unwrap_or(DEFAULT_MODE);
            let optional = cm.optional == Some(true);
            self.config_map_files(&cm.name, cm.items.as_ref(), mode, optional)
                .await
        } else if let Some(s) = &vol.secret {
            let mode = s.default_mode.unwrap_or(DEFAULT_MODE);
            let optional = s.optional == Some(true);
            let secret = s.secret_name.clone().unwrap_or_default();
            self.secret_files(&secret, s.items.as_ref(), mode, optional)
                .await
        } else if let Some(d) = &vol.downward_api {
            let mode = d.default_mode.unwrap_or(DEFAULT_MODE);
            self.downward_files(d.items.iter().flatten(), mode)
        } else if let Some(p) = &vol.projected {
            let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
            let mut files = Vec::new();
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    let optional = cm.optional == Some(true);
                    files.extend(
                        self.config_map_files(&cm.name, cm.items.as_ref(), mode, optional)
                            .await?,
                    );
                } else if let Some(s) = &src.secret {
                    let optional = s.optional == Some(true);
                    files.extend(
                        self.secret_files(&s.name, s.items.as_ref(), mode, optional)
                            .await?,
                    );
                } else if let Some(d) = &src.downward_api {
                    files.extend(self.downward_files(d.items.iter().flatten(), mode)?);
                } else if let Some(t) = &src.service_account_token {
                    files.push(self.token_file(t, mode).await?);
                } else {
                    return Err(format!(
                        "volume {name:?}: projected sources other than configMap, secret, downwardAPI and serviceAccountToken are not supported"
                    ));
                }
            }
            Ok(files)
        } else {
            Err(format!("volume {name:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected are supported"))
        }
    }

    /// The configMap or secret a volume reads; `None` when an optional one is absent.
    async fn source<K>(&self, kind: &str, name: &str, optional: bool) -> Result<Option<K>, String>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(
            self.env.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        match api.get_opt(name).await {
            Ok(Some(o)) => Ok(Some(o)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(format!("{kind} {name:?} not found")),
            Err(e) => Err(format!("{kind} {name:?}: {e}")),
        }
    }

    async fn config_map_files(
        &self,
        name: &str,
        items: Option<&Vec<KeyToPath>>,
        mode: i32,
        optional: bool,
    ) -> Result<Vec<File>, String> {
        let Some(obj) = self
            .source::<ConfigMap>("configmap", name, optional)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut data: BTreeMap<String, Vec<u8>> = obj
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            obj.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        select(&format!("configmap {name:?}"), data, items, mode, optional)
    }

    async fn secret_files(
        &self,
        name: &str,
        items: Option<&Vec<KeyToPath>>,
        mode: i32,
        optional: bool,
    ) -> Result<Vec<File>, String> {
        let Some(obj) = self.source::<Secret>("secret", name, optional).await? else {
            return Ok(Vec::new());
        };
        let mut data: BTreeMap<String, Vec<u8>> = obj
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.extend(
            obj.string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        select(&format!("secret {name:?}"), data, items, mode, optional)
    }

    fn downward_files<'a>(
        &self,
        items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
        mode: i32,
    ) -> Result<Vec<File>, String> {
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                .collect::<String>()
        };
        let mut out = Vec::new();
        for item in items {
            let Some(field) = item.field_ref.as_ref().map(|f| f.field_path.as_str()) else {
                continue;
            };
            let value = match field {
                "metadata.labels" => pairs(self.pod.labels()),
                "metadata.annotations" => pairs(self.pod.annotations()),
                "metadata.name" => self.pod.name_any(),
                "metadata.namespace" => self.pod.namespace().unwrap_or_default(),
                "metadata.uid" => self.uid.clone(),
                _ => continue,
            };
            out.push(File {
                path: item.path.clone(),
                data: value.into_bytes(),
                mode: item.mode.unwrap_or(mode) as u32,
            });
        }
        Ok(out)
    }
}
