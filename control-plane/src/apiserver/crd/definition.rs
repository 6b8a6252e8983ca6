//! Checks of a CustomResourceDefinition itself, and the status the server
//! gives it: accepted names, NamesAccepted and Established conditions,
//! stored versions.

use serde_json::{json, Value};

use super::registry;
use crate::apiserver::errors::Cause;
use crate::apiserver::validation::{is_dns_label, is_dns_subdomain};

/// Whether the CRD's Established condition is True.
pub fn established(crd: &Value) -> bool {
    condition(crd, "Established") == Some("True")
}

fn condition<'a>(crd: &'a Value, ty: &str) -> Option<&'a str> {
    crd.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?
        .get("status")?
        .as_str()
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Version names must be DNS labels starting with a letter (`v1`, `v1beta1`).
fn version_name_ok(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// The CRD's own validation: a cause for every field that is wrong.
pub fn validate(crd: &Value, causes: &mut Vec<Cause>) {
    let name = str_at(crd, "/metadata/name");
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let kind = str_at(crd, "/spec/names/kind");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !is_dns_subdomain(group) || !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else if !is_dns_label(plural) {
        causes.push(Cause::invalid(
            "spec.names.plural",
            &json!(plural),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    let singular = str_at(crd, "/spec/names/singular");
    if !singular.is_empty() && !is_dns_label(singular) {
        causes.push(Cause::invalid(
            "spec.names.singular",
            &json!(singular),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    } else if !kind.starts_with(|c: char| c.is_ascii_alphabetic())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        causes.push(Cause::invalid(
            "spec.names.kind",
            &json!(kind),
            "must be an alphanumeric name starting with a letter",
        ));
    }
    if let Some(list) = crd.pointer("/spec/names/listKind").and_then(Value::as_str) {
        if !list.is_empty() && list == kind {
            causes.push(Cause::invalid(
                "spec.names.listKind",
                &json!(list),
                "kind and listKind may not be the same",
            ));
        }
    }
    for field in ["shortNames", "categories"] {
        if let Some(items) = crd
            .pointer(&format!("/spec/names/{field}"))
            .and_then(Value::as_array)
        {
            for (i, s) in items.iter().enumerate() {
                if !s.as_str().is_some_and(is_dns_label) {
                    causes.push(Cause::invalid(
                        format!("spec.names.{field}[{i}]"),
                        s,
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                    ));
                }
            }
        }
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if crate::apiserver::resources::RESOURCES
        .iter()
        .any(|r| r.group == group)
    {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "is served by the API server itself",
        ));
    }
    match crd.pointer("/spec/scope").and_then(Value::as_str) {
        Some("Namespaced" | "Cluster") => {}
        None | Some("") => causes.push(Cause::required("spec.scope")),
        Some(other) => causes.push(Cause::not_supported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(versions),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(versions.iter().map(|v| &v["name"]).collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = v["name"].as_str().unwrap_or("");
        if vname.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        } else if !version_name_ok(vname) {
            causes.push(Cause::invalid(
                format!("{at}.name"),
                &json!(vname),
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-' and start with a letter",
            ));
        } else if seen.contains(&vname) {
            causes.push(Cause::duplicate(format!("{at}.name"), &json!(vname)));
        }
        seen.push(vname);
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push(Cause::required(format!("{at}.schema.openAPIV3Schema"))),
            Some(s) => super::schema::check_structural(
                s,
                &format!("{at}.schema.openAPIV3Schema"),
                true,
                causes,
            ),
        }
        if let Some(cols) = v["additionalPrinterColumns"].as_array() {
            for (j, c) in cols.iter().enumerate() {
                let cat = format!("{at}.additionalPrinterColumns[{j}]");
                if c["name"].as_str().unwrap_or("").is_empty() {
                    causes.push(Cause::required(format!("{cat}.name")));
                }
                match c["type"].as_str() {
                    Some("integer" | "number" | "string" | "boolean" | "date") => {}
                    _ => causes.push(Cause::not_supported(
                        format!("{cat}.type"),
                        &c["type"],
                        &["boolean", "date", "integer", "number", "string"],
                    )),
                }
                if !c["jsonPath"].as_str().is_some_and(|p| p.starts_with('.')) {
                    causes.push(Cause::invalid(
                        format!("{cat}.jsonPath"),
                        &c["jsonPath"],
                        "must be a simple json path starting with .",
                    ));
                }
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            for f in ["specReplicasPath", "statusReplicasPath"] {
                if !scale[f].as_str().is_some_and(|p| p.starts_with('.')) {
                    causes.push(Cause::invalid(
                        format!("{at}.subresources.scale.{f}"),
                        &scale[f],
                        "should be a json path under .spec or .status",
                    ));
                }
            }
        }
    }
}

fn cond(ty: &str, status: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "lastTransitionTime": now,
           "reason": reason, "message": message})
}

/// Sets the status a CRD gets from the server: its names accepted (unless
/// another CRD holds its plural or kind) and then Established, which this
/// server's registry serves as soon as the write lands.
pub fn admit(crd: &mut Value, now: &str) {
    let name = str_at(crd, "/metadata/name").to_string();
    let group = str_at(crd, "/spec/group").to_string();
    let plural = str_at(crd, "/spec/names/plural").to_string();
    let kind = str_at(crd, "/spec/names/kind").to_string();
    let conflict = registry().claimed(&group, &plural, &kind, &name);
    let mut status = crd.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    let keep_time = |ty: &str, want: bool, fresh: Value| -> Value {
        // A condition keeps its transition time while its status holds.
        match condition(crd, ty) {
            Some(s) if (s == "True") == want => {
                let mut c = fresh;
                if let Some(t) = crd
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|c| c["type"] == ty))
                    .and_then(|c| c.get("lastTransitionTime"))
                {
                    c["lastTransitionTime"] = t.clone();
                }
                c
            }
            _ => fresh,
        }
    };
    let conditions = match conflict {
        Some(other) => {
            let msg = format!("the plural or kind is already in use by {other}");
            vec![
                keep_time(
                    "NamesAccepted",
                    false,
                    cond("NamesAccepted", false, "NameConflict", &msg, now),
                ),
                keep_time(
                    "Established",
                    false,
                    cond(
                        "Established",
                        false,
                        "NotAccepted",
                        "not all names are accepted",
                        now,
                    ),
                ),
            ]
        }
        None => {
            let mut names = crd["spec"]["names"].clone();
            if names["singular"].as_str().unwrap_or("").is_empty() {
                names["singular"] = json!(kind.to_lowercase());
            }
            if names["listKind"].as_str().unwrap_or("").is_empty() {
                names["listKind"] = json!(format!("{kind}List"));
            }
            status["acceptedNames"] = names;
            vec![
                keep_time(
                    "NamesAccepted",
                    true,
                    cond(
                        "NamesAccepted",
                        true,
                        "NoConflicts",
                        "no conflicts found",
                        now,
                    ),
                ),
                keep_time(
                    "Established",
                    true,
                    cond(
                        "Established",
                        true,
                        "InitialNamesAccepted",
                        "the initial names have been accepted",
                        now,
                    ),
                ),
            ]
        }
    };
    status["conditions"] = json!(conditions);
    let mut stored: Vec<Value> = status["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(v) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| v["name"].clone())
    {
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    status["storedVersions"] = json!(stored);
    if status.get("acceptedNames").is_none() {
        status["acceptedNames"] = json!({"plural": "", "kind": ""});
    }
    crd["status"] = status;
}
