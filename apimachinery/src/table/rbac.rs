//! Roles, ClusterRoles and their bindings.

use serde_json::Value;

use super::fields::{age, list, name, text};
use super::{Column, Row, AGE, NAME};

/// Role and ClusterRole columns: when, not how long ago.
pub(super) const ROLE_COLUMNS: &[Column] = &[
    NAME,
    Column {
        format: "date",
        ..Column::new(
            "Created At",
            "string",
            "When the role was created (metadata.creationTimestamp).",
        )
    },
];

/// One Role or ClusterRole row.
pub(super) fn role_row(role: &Value, _now: i64) -> Row {
    Row::new(vec![
        name(role),
        text(role, &["metadata", "creationTimestamp"]).into(),
    ])
}

/// RoleBinding and ClusterRoleBinding columns.
pub(super) const BINDING_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Role", "string", "The role bound, as KIND/NAME."),
    AGE,
    Column::new("Users", "string", "Users the role is bound to.").wide(),
    Column::new("Groups", "string", "Groups the role is bound to.").wide(),
    Column::new(
        "ServiceAccounts",
        "string",
        "Service accounts the role is bound to, as NAMESPACE/NAME.",
    )
    .wide(),
];

/// One binding row.
pub(super) fn binding_row(binding: &Value, now: i64) -> Row {
    let subjects = list(binding, &["subjects"]);
    let of = |kind: &str| -> String {
        subjects
            .iter()
            .filter(|s| text(s, &["kind"]) == kind)
            .map(|s| match kind {
                "ServiceAccount" => {
                    format!("{}/{}", text(s, &["namespace"]), text(s, &["name"]))
                }
                _ => text(s, &["name"]).to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Row::new(vec![
        name(binding),
        format!(
            "{}/{}",
            text(binding, &["roleRef", "kind"]),
            text(binding, &["roleRef", "name"])
        )
        .into(),
        age(binding, now),
        of("User").into(),
        of("Group").into(),
        of("ServiceAccount").into(),
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn bindings_show_the_role_and_subjects() {
        let b = json!({
            "metadata": {"name": "x", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [
                {"kind": "User", "name": "alice"},
                {"kind": "User", "name": "bob"},
                {"kind": "ServiceAccount", "name": "robot", "namespace": "ns"}
            ]
        });
        let now = crate::table::parse_rfc3339("2024-01-01T00:05:00Z").unwrap();
        let row = super::binding_row(&b, now);
        assert_eq!(
            row.cells,
            vec![
                json!("x"),
                json!("ClusterRole/view"),
                json!("5m"),
                json!("alice, bob"),
                json!(""),
                json!("ns/robot")
            ]
        );
    }
}
