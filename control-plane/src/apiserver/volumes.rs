//! Defaults and validation of storage objects: PersistentVolumes,
//! PersistentVolumeClaims (core/v1) and StorageClasses (storage.k8s.io/v1).

use serde_json::{json, Map, Value};

use super::defaults::set_default;
use super::errors::Cause;

/// Access modes a volume or claim may ask for.
const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// Volume sources a PersistentVolume may name (one of them).
const PV_SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "iscsi",
    "csi",
    "fc",
    "cephfs",
    "rbd",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "cinder",
    "flexVolume",
    "flocker",
    "vsphereVolume",
    "quobyte",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "photonPersistentDisk",
];

fn spec_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    obj["spec"].as_object_mut()
}

/// PersistentVolume defaults: kept after release, a file system.
pub fn default_pv(obj: &mut Value) {
    if let Some(spec) = spec_mut(obj) {
        set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        set_default(spec, "volumeMode", json!("Filesystem"));
    }
}

/// PersistentVolumeClaim defaults: a file system.
pub fn default_pvc(obj: &mut Value) {
    if let Some(spec) = spec_mut(obj) {
        set_default(spec, "volumeMode", json!("Filesystem"));
    }
}

/// StorageClass defaults: provisioned volumes are deleted with their
/// claim and bound as soon as the claim exists.
pub fn default_storage_class(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        set_default(o, "reclaimPolicy", json!("Delete"));
        set_default(o, "volumeBindingMode", json!("Immediate"));
    }
}

fn access_modes(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let modes = spec
        .get("accessModes")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty());
    let Some(modes) = modes else {
        causes.push(Cause::required(format!("{path}.accessModes")));
        return;
    };
    for m in modes {
        if !m.as_str().is_some_and(|m| ACCESS_MODES.contains(&m)) {
            causes.push(Cause::not_supported(
                format!("{path}.accessModes"),
                m,
                ACCESS_MODES,
            ));
        }
    }
    let once_pod = modes.iter().any(|m| m == "ReadWriteOncePod");
    if once_pod && modes.len() > 1 {
        causes.push(Cause::forbidden(
            format!("{path}.accessModes"),
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

/// A storage quantity at `map[storage]`, required and parseable.
fn storage_quantity(map: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let field = format!("{path}[storage]");
    match map.and_then(|m| m.get("storage")) {
        None | Some(Value::Null) => causes.push(Cause::required(field)),
        Some(q) => {
            let ok = q
                .as_str()
                .is_some_and(|s| apimachinery::quantity::value(s).is_ok_and(|v| v >= 0));
            if !ok {
                causes.push(Cause::invalid(
                    field,
                    q,
                    "must be a non-negative quantity such as 1Gi",
                ));
            }
        }
    }
}

fn absolute_path(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    match v.as_str() {
        None | Some("") => causes.push(Cause::required(field)),
        Some(p) if !p.starts_with('/') => {
            causes.push(Cause::invalid(field, v, "must be an absolute path"))
        }
        Some(p) if p.split('/').any(|c| c == "..") => {
            causes.push(Cause::invalid(field, v, "must not contain '..'"))
        }
        Some(_) => {}
    }
}

/// What the API server refuses in a PersistentVolume.
pub fn validate_pv(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    storage_quantity(spec.get("capacity"), "spec.capacity", causes);
    access_modes(&spec, "spec", causes);
    let sources: Vec<&str> = PV_SOURCES
        .iter()
        .copied()
        .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match sources.as_slice() {
        [] => causes.push(Cause::required_msg("spec", "must specify a volume type")),
        [_] => {}
        [_, second, ..] => causes.push(Cause::forbidden(
            format!("spec.{second}"),
            "may not specify more than 1 volume type",
        )),
    }
    if let Some(h) = spec.get("hostPath").filter(|v| !v.is_null()) {
        absolute_path(&h["path"], "spec.hostPath.path", causes);
    }
    if let Some(l) = spec.get("local").filter(|v| !v.is_null()) {
        absolute_path(&l["path"], "spec.local.path", causes);
        if spec
            .pointer("/nodeAffinity/required")
            .is_none_or(Value::is_null)
        {
            causes.push(Cause::required_msg(
                "spec.nodeAffinity",
                "Local volume requires node affinity",
            ));
        }
    }
    if let Some(p) = spec.get("persistentVolumeReclaimPolicy") {
        if !matches!(p.as_str(), Some("Retain" | "Delete" | "Recycle")) {
            causes.push(Cause::not_supported(
                "spec.persistentVolumeReclaimPolicy",
                p,
                &["Delete", "Recycle", "Retain"],
            ));
        }
    }
    volume_mode(&spec, causes);
}

fn volume_mode(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(m) = spec.get("volumeMode") {
        if !matches!(m.as_str(), Some("Filesystem" | "Block")) {
            causes.push(Cause::not_supported(
                "spec.volumeMode",
                m,
                &["Block", "Filesystem"],
            ));
        }
    }
}

/// What the API server refuses in a PersistentVolumeClaim.
pub fn validate_pvc(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    access_modes(&spec, "spec", causes);
    storage_quantity(
        spec.pointer("/resources/requests"),
        "spec.resources",
        causes,
    );
    volume_mode(&spec, causes);
    if let Some(c) = spec.get("storageClassName").and_then(Value::as_str) {
        if !c.is_empty() && !super::validation::is_dns_subdomain(c) {
            causes.push(Cause::invalid(
                "spec.storageClassName",
                &Value::from(c),
                "must be a lowercase RFC 1123 subdomain",
            ));
        }
    }
}

/// What the API server refuses in a StorageClass.
pub fn validate_storage_class(obj: &Value, causes: &mut Vec<Cause>) {
    match obj.get("provisioner").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("provisioner")),
        Some(p) if !super::validation::is_qualified_name(&p.to_ascii_lowercase()) => causes.push(Cause::invalid(
            "provisioner",
            &Value::from(p),
            "must be a qualified name: an optional DNS subdomain prefix and '/', then up to 63 \
             alphanumerics, '-', '_' or '.' (e.g. 'rancher.io/local-path')",
        )),
        Some(_) => {}
    }
    if let Some(p) = obj.get("reclaimPolicy") {
        if !matches!(p.as_str(), Some("Retain" | "Delete")) {
            causes.push(Cause::not_supported(
                "reclaimPolicy",
                p,
                &["Delete", "Retain"],
            ));
        }
    }
    if let Some(m) = obj.get("volumeBindingMode") {
        if !matches!(m.as_str(), Some("Immediate" | "WaitForFirstConsumer")) {
            causes.push(Cause::not_supported(
                "volumeBindingMode",
                m,
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(causes: &[Cause]) -> Vec<String> {
        causes.iter().map(|c| c.field.clone()).collect()
    }

    #[test]
    fn volumes_default_to_retain_and_a_file_system() {
        let mut pv = json!({"metadata": {"name": "pv1"}, "spec": {}});
        default_pv(&mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        let mut sc = json!({"metadata": {"name": "fast"}, "provisioner": "x.io/y"});
        default_storage_class(&mut sc);
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
    }

    #[test]
    fn bad_volumes_and_claims_are_refused_naming_the_field() {
        let mut causes = Vec::new();
        validate_pv(
            &json!({"spec": {"accessModes": ["ReadWriteSometimes"]}}),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            ["spec.capacity[storage]", "spec.accessModes", "spec"]
        );
        let mut causes = Vec::new();
        validate_pv(
            &json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                             "local": {"path": "data"}}}),
            &mut causes,
        );
        assert_eq!(fields(&causes), ["spec.local.path", "spec.nodeAffinity"]);
        let mut causes = Vec::new();
        validate_pvc(
            &json!({"spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "lots"}}}}),
            &mut causes,
        );
        assert_eq!(fields(&causes), ["spec.resources[storage]"]);
        let mut causes = Vec::new();
        validate_storage_class(&json!({"volumeBindingMode": "Later"}), &mut causes);
        assert_eq!(fields(&causes), ["provisioner", "volumeBindingMode"]);
        for good in [
            "kestrel.io/local-path",
            "rancher.io/local-path",
            "kubernetes.io/no-provisioner",
            "ebs",
        ] {
            let mut causes = Vec::new();
            validate_storage_class(&json!({"provisioner": good}), &mut causes);
            assert!(causes.is_empty(), "{good}: {causes:?}");
        }
        for bad in ["a/b/c", "-x.io/y", "x.io/", "x.io/y-", "/y"] {
            let mut causes = Vec::new();
            validate_storage_class(&json!({"provisioner": bad}), &mut causes);
            assert_eq!(fields(&causes), ["provisioner"], "{bad}");
        }
    }

    #[test]
    fn a_good_local_volume_passes() {
        let mut causes = Vec::new();
        validate_pv(
            &json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                             "local": {"path": "/mnt/disk"},
                             "nodeAffinity": {"required": {"nodeSelectorTerms": []}}}}),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
    }
}
