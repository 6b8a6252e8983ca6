//! Unit tests for field selectors: operators, escapes, error texts, the
//! forms kubectl sends, supported-field checks and printing.

use serde_json::{json, Value};

use super::{supported_fields, FieldSelector, SelectorError};

fn sel(s: &str) -> FieldSelector {
    match FieldSelector::parse(s) {
        Ok(sel) => sel,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn err(s: &str) -> SelectorError {
    match FieldSelector::parse(s) {
        Ok(sel) => panic!("{s:?} should fail, parsed as {sel:?}"),
        Err(e) => e,
    }
}

fn pod(node: Option<&str>, phase: &str) -> Value {
    let mut p = json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"restartPolicy": "Always"},
        "status": {"phase": phase}
    });
    if let (Some(node), Some(spec)) = (node, p.get_mut("spec")) {
        spec["nodeName"] = json!(node);
    }
    p
}

#[test]
fn empty_selector() {
    for s in ["", ",", " , ,"] {
        let s = sel(s);
        assert!(s.is_empty());
        assert!(s.matches(&json!({})));
        assert_eq!(s.to_string(), "");
    }
}

#[test]
fn operators() {
    let p = pod(Some("n1"), "Running");
    assert!(sel("spec.nodeName=n1").matches(&p));
    assert!(sel("spec.nodeName==n1").matches(&p));
    assert!(!sel("spec.nodeName!=n1").matches(&p));
    assert!(sel("spec.nodeName!=n2").matches(&p));
    assert!(sel("metadata.name=p,metadata.namespace=default").matches(&p));
    assert!(!sel("metadata.name=p,metadata.namespace=other").matches(&p));
    assert!(sel(" status.phase = Running ").matches(&p));
}

#[test]
fn kubectl_node_pods_form() {
    // What `kubectl describe node n1` sends.
    let s = sel("spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed");
    assert!(s.matches(&pod(Some("n1"), "Running")));
    assert!(!s.matches(&pod(Some("n1"), "Succeeded")));
    assert!(!s.matches(&pod(Some("n1"), "Failed")));
    assert!(!s.matches(&pod(Some("n2"), "Running")));
    assert!(!s.matches(&pod(None, "Pending")));
    assert_eq!(s.exact("spec.nodeName"), Some("n1"));
    assert_eq!(s.exact("status.phase"), None);
    assert!(s.check_supported(&supported_fields("pods")).is_ok());
}

#[test]
fn kubectl_describe_events_form() {
    // What `kubectl describe pod x -n y` sends for the events section.
    let s = sel("involvedObject.name=x,involvedObject.namespace=y,involvedObject.uid=z");
    let event = json!({
        "involvedObject": {"kind": "Pod", "name": "x", "namespace": "y", "uid": "z"},
        "reason": "Scheduled", "type": "Normal", "source": {"component": "scheduler"}
    });
    assert!(s.matches(&event));
    let mut other = event.clone();
    other["involvedObject"]["uid"] = json!("w");
    assert!(!s.matches(&other));
    assert!(s.check_supported(&supported_fields("events")).is_ok());
    assert_eq!(s.exact("involvedObject.uid"), Some("z"));
    // `source` reads source.component, as in Kubernetes.
    assert!(sel("source=scheduler,type=Normal").matches(&event));
}

#[test]
fn missing_fields_compare_as_zero_values() {
    // Unscheduled pods have no spec.nodeName: `spec.nodeName=` finds them.
    assert!(sel("spec.nodeName=").matches(&pod(None, "Pending")));
    assert!(!sel("spec.nodeName=").matches(&pod(Some("n1"), "Pending")));
    assert!(sel("spec.nodeName!=").matches(&pod(Some("n1"), "Pending")));
    assert!(sel("spec.unschedulable=false").matches(&json!({"spec": {}})));
    assert!(sel("spec.hostNetwork=false").matches(&json!({})));
    assert!(sel("status.replicas=0").matches(&json!({"status": {"replicas": null}})));
    assert!(sel("metadata.namespace=").matches(&json!({"metadata": {"name": "n"}})));
    assert!(sel("a.b.c=").matches(&json!({"a": "scalar"})));
}

#[test]
fn scalars_compare_by_string_form() {
    assert!(sel("status.replicas=3").matches(&json!({"status": {"replicas": 3}})));
    assert!(sel("spec.unschedulable=true").matches(&json!({"spec": {"unschedulable": true}})));
    assert!(sel("spec.x!=a").matches(&json!({"spec": {"x": ["a"]}})));
}

#[test]
fn escapes() {
    let s = sel(r"metadata.name=a\,b\=c\\d");
    assert_eq!(s.exact("metadata.name"), Some(r"a,b=c\d"));
    assert!(s.matches(&json!({"metadata": {"name": r"a,b=c\d"}})));
    assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d");
    // An escaped comma does not split terms.
    let two = sel(r"a=x\,y,b=z");
    assert_eq!(two.exact("a"), Some("x,y"));
    assert_eq!(two.exact("b"), Some("z"));
}

#[test]
fn errors() {
    assert_eq!(
        err("a=b,nope").to_string(),
        "invalid selector: 'a=b,nope'; can't understand 'nope'"
    );
    assert_eq!(
        err(r"a=b\x").to_string(),
        r"invalid field selector: invalid escape sequence: \x"
    );
    assert_eq!(
        err(r"a=b\").to_string(),
        r"invalid field selector: invalid escape sequence: \"
    );
    assert_eq!(err("a=b=c"), SelectorError::UnescapedChar('='));
    assert_eq!(
        err("a===b").to_string(),
        "invalid field selector: unescaped character in value: '='"
    );
}

#[test]
fn operator_precedence_in_terms() {
    // `!=` and `==` win over `=` at the same position.
    let s = sel("a!=b,c==d");
    assert_eq!(s.to_string(), "a!=b,c=d");
    assert_eq!(s.exact("a"), None);
    assert_eq!(s.exact("c"), Some("d"));
    // The first operator splits; the field itself takes no escapes.
    assert_eq!(sel(r"x\=y").exact(r"x\"), Some("y"));
}

#[test]
fn check_supported_names_the_field() {
    let s = sel("metadata.name=a,spec.foo=b");
    assert_eq!(
        s.check_supported(&supported_fields("pods")),
        Err(SelectorError::UnsupportedField("spec.foo".into()))
    );
    assert_eq!(
        s.check_supported(&supported_fields("pods"))
            .map_err(|e| e.to_string()),
        Err("field label not supported: spec.foo".to_string())
    );
    assert!(sel("").check_supported(&[]).is_ok());
    assert!(sel("status.phase=Active")
        .check_supported(&supported_fields("namespaces"))
        .is_ok());
    assert!(sel("type=Opaque")
        .check_supported(&supported_fields("secrets"))
        .is_ok());
    assert!(sel("type=Opaque")
        .check_supported(&supported_fields("configmaps"))
        .is_err());
}

#[test]
fn supported_field_lists() {
    for r in ["pods", "events", "nodes", "configmaps", "whatever", ""] {
        let f = supported_fields(r);
        assert!(
            f.contains(&"metadata.name") && f.contains(&"metadata.namespace"),
            "{r}"
        );
    }
    let pods = supported_fields("pods");
    for f in [
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ] {
        assert!(pods.contains(&f), "{f}");
    }
    let events = supported_fields("events");
    for f in [
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ] {
        assert!(events.contains(&f), "{f}");
    }
    assert!(supported_fields("nodes").contains(&"spec.unschedulable"));
    assert!(supported_fields("jobs.batch").contains(&"status.successful"));
    assert!(supported_fields("replicationcontrollers").contains(&"status.replicas"));
    assert_eq!(supported_fields("configmaps").len(), 2);
}

#[test]
fn display_round_trips() {
    for input in [
        "b=2,a=1",
        "a==1",
        "x!=y",
        r"v=\,\=\\",
        "a! =b",
        "=v",
        "f=",
        "spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed",
    ] {
        let parsed = sel(input);
        assert_eq!(sel(&parsed.to_string()), parsed, "{input} -> {parsed}");
    }
    assert_eq!(sel("b=2,a==1").to_string(), "a=1,b=2");
}
