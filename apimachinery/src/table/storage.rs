//! Storage: PersistentVolumes, PersistentVolumeClaims and StorageClasses,
//! with the columns `kubectl get pv,pvc,sc` prints.

use serde_json::Value;

use super::fields::{age, at, flag, list, name, text};
use super::{Column, Row, AGE, NAME};

const ACCESS_MODES: Column = Column::new(
    "Access Modes",
    "string",
    "How the volume may be mounted: RWO, ROX, RWX, RWOP.",
);
const STORAGE_CLASS: Column = Column::new(
    "StorageClass",
    "string",
    "The class the volume belongs to or the claim asks for.",
);
const ATTRIBUTES_CLASS: Column = Column::new(
    "VolumeAttributesClass",
    "string",
    "The VolumeAttributesClass in use, if any.",
);
const VOLUME_MODE: Column = Column::new("VolumeMode", "string", "Filesystem or Block.").wide();

/// PersistentVolume table columns.
pub(super) const PV_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Capacity", "string", "The volume's size."),
    ACCESS_MODES,
    Column::new(
        "Reclaim Policy",
        "string",
        "What happens to the volume once its claim is gone.",
    ),
    Column::new("Status", "string", "Available, Bound, Released or Failed."),
    Column::new("Claim", "string", "The claim bound to the volume."),
    STORAGE_CLASS,
    ATTRIBUTES_CLASS,
    Column::new("Reason", "string", "Why the volume is in its phase."),
    AGE,
    VOLUME_MODE,
];

/// PersistentVolumeClaim table columns.
pub(super) const PVC_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Status", "string", "Pending, Bound or Lost."),
    Column::new("Volume", "string", "The volume bound to the claim."),
    Column::new("Capacity", "string", "The bound volume's size."),
    ACCESS_MODES,
    STORAGE_CLASS,
    ATTRIBUTES_CLASS,
    AGE,
    VOLUME_MODE,
];

/// StorageClass table columns.
pub(super) const STORAGE_CLASS_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Provisioner", "string", "Who makes the class's volumes."),
    Column::new(
        "ReclaimPolicy",
        "string",
        "What happens to a provisioned volume once its claim is gone.",
    ),
    Column::new(
        "VolumeBindingMode",
        "string",
        "Immediate, or WaitForFirstConsumer: once a pod using the claim is scheduled.",
    ),
    Column::new(
        "AllowVolumeExpansion",
        "string",
        "Whether claims of the class may grow.",
    ),
    AGE,
];

/// Annotation marking the StorageClass claims get when they name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Access modes in kubectl's short form and its fixed order.
fn access_modes(obj: &Value) -> String {
    let modes = list(obj, &["spec", "accessModes"]);
    let has = |m: &str| modes.iter().any(|v| v == m);
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(long, _)| has(long))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn unset_or(obj: &Value, path: &[&str]) -> Value {
    match text(obj, path) {
        "" => "<unset>".into(),
        s => s.into(),
    }
}

/// The class a volume or claim names (the field, or the old annotation).
fn class(obj: &Value) -> Value {
    let from_annotation = text(
        obj,
        &[
            "metadata",
            "annotations",
            "volume.beta.kubernetes.io/storage-class",
        ],
    );
    match text(obj, &["spec", "storageClassName"]) {
        "" => from_annotation.into(),
        s => s.into(),
    }
}

fn phase(obj: &Value) -> Value {
    if at(obj, &["metadata", "deletionTimestamp"]).is_some() {
        "Terminating".into()
    } else {
        text(obj, &["status", "phase"]).into()
    }
}

/// One persistent volume row.
pub(super) fn pv_row(obj: &Value, now: i64) -> Row {
    let claim = match (
        text(obj, &["spec", "claimRef", "namespace"]),
        text(obj, &["spec", "claimRef", "name"]),
    ) {
        (_, "") => String::new(),
        (ns, n) => format!("{ns}/{n}"),
    };
    Row::new(vec![
        name(obj),
        text(obj, &["spec", "capacity", "storage"]).into(),
        access_modes(obj).into(),
        text(obj, &["spec", "persistentVolumeReclaimPolicy"]).into(),
        phase(obj),
        claim.into(),
        class(obj),
        unset_or(obj, &["spec", "volumeAttributesClassName"]),
        text(obj, &["status", "reason"]).into(),
        age(obj, now),
        text(obj, &["spec", "volumeMode"]).into(),
    ])
}

/// One persistent volume claim row. Capacity and access modes are the
/// bound volume's, so they stay empty until the claim is bound.
pub(super) fn pvc_row(obj: &Value, now: i64) -> Row {
    let bound = !text(obj, &["spec", "volumeName"]).is_empty();
    let (capacity, modes) = if bound {
        let status = at(obj, &["status"]).cloned().unwrap_or(Value::Null);
        let modes = access_modes(&serde_json::json!({"spec": status}));
        (
            text(obj, &["status", "capacity", "storage"]).to_string(),
            modes,
        )
    } else {
        (String::new(), String::new())
    };
    Row::new(vec![
        name(obj),
        phase(obj),
        text(obj, &["spec", "volumeName"]).into(),
        capacity.into(),
        modes.into(),
        class(obj),
        unset_or(obj, &["spec", "volumeAttributesClassName"]),
        age(obj, now),
        text(obj, &["spec", "volumeMode"]).into(),
    ])
}

/// One storage class row; the default class says so after its name.
pub(super) fn storage_class_row(obj: &Value, now: i64) -> Row {
    let mut shown = text(obj, &["metadata", "name"]).to_string();
    let default = text(obj, &["metadata", "annotations", DEFAULT_CLASS_ANNOTATION]);
    if default == "true" {
        shown.push_str(" (default)");
    }
    let or = |path: &[&str], d: &'static str| match text(obj, path) {
        "" => d.to_string(),
        s => s.to_string(),
    };
    Row::new(vec![
        shown.into(),
        text(obj, &["provisioner"]).into(),
        or(&["reclaimPolicy"], "Delete").into(),
        or(&["volumeBindingMode"], "Immediate").into(),
        flag(obj, &["allowVolumeExpansion"]).to_string().into(),
        age(obj, now),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_795_855_897;
    const CREATED: &str = "2026-11-28T08:41:37Z";

    #[test]
    fn volumes_and_claims_read_as_kubectl_prints_them() {
        let pv = json!({"metadata": {"name": "pvc-1", "creationTimestamp": CREATED},
            "spec": {"capacity": {"storage": "1Gi"},
                     "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "claimRef": {"namespace": "default", "name": "data-web-0"},
                     "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}});
        assert_eq!(
            pv_row(&pv, NOW).cells,
            vec![
                json!("pvc-1"),
                json!("1Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("default/data-web-0"),
                json!("local-path"),
                json!("<unset>"),
                json!(""),
                json!("10m"),
                json!("Filesystem"),
            ]
        );
        let pending = json!({"metadata": {"name": "data-web-0", "creationTimestamp": CREATED},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "volumeMode": "Filesystem"},
            "status": {"phase": "Pending"}});
        assert_eq!(
            pvc_row(&pending, NOW).cells,
            vec![
                json!("data-web-0"),
                json!("Pending"),
                json!(""),
                json!(""),
                json!(""),
                json!("local-path"),
                json!("<unset>"),
                json!("10m"),
                json!("Filesystem"),
            ]
        );
        let mut bound = pending.clone();
        bound["spec"]["volumeName"] = json!("pvc-1");
        bound["status"] = json!({"phase": "Bound", "capacity": {"storage": "1Gi"},
                                 "accessModes": ["ReadWriteOnce"]});
        let cells = pvc_row(&bound, NOW).cells;
        assert_eq!(
            cells[1..5],
            [json!("Bound"), json!("pvc-1"), json!("1Gi"), json!("RWO")]
        );
    }

    #[test]
    fn the_default_class_is_marked() {
        let sc = json!({"metadata": {"name": "local-path", "creationTimestamp": CREATED,
                "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            storage_class_row(&sc, NOW).cells,
            vec![
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!("false"),
                json!("10m"),
            ]
        );
    }
}
