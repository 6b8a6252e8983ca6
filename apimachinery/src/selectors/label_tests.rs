//! Unit tests for label selectors: each operator, the three selector
//! sources, error texts and printing.

use serde_json::{json, Map, Value};

use super::{LabelSelector, SelectorError};

fn labels(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn sel(s: &str) -> LabelSelector {
    match LabelSelector::parse(s) {
        Ok(sel) => sel,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn err(s: &str) -> String {
    match LabelSelector::parse(s) {
        Ok(sel) => panic!("{s:?} should fail, parsed as {sel:?}"),
        Err(e) => e.to_string(),
    }
}

fn matches(s: &str, l: Value) -> bool {
    sel(s).matches(Some(&labels(l)))
}

#[test]
fn empty_selector_matches_everything() {
    for s in ["", "   ", "\t\n"] {
        let sel = sel(s);
        assert!(sel.is_empty());
        assert!(sel.matches(None));
        assert!(sel.matches(Some(&labels(json!({"a": "b"})))));
        assert_eq!(sel.to_string(), "");
    }
}

#[test]
fn equality_operators() {
    for s in ["a=b", "a==b", " a = b ", "a == b"] {
        assert!(matches(s, json!({"a": "b"})), "{s}");
        assert!(!matches(s, json!({"a": "c"})), "{s}");
        assert!(!matches(s, json!({})), "{s}");
    }
    assert!(matches("a!=b", json!({"a": "c"})));
    assert!(!matches("a!=b", json!({"a": "b"})));
    // A missing label is "not equal".
    assert!(matches("a!=b", json!({})));
    assert!(sel("a!=b").matches(None));
}

#[test]
fn empty_value_means_present_and_empty() {
    assert!(matches("a=", json!({"a": ""})));
    assert!(!matches("a=", json!({"a": "x"})));
    assert!(!matches("a=", json!({})));
    assert!(matches("a=,b=c", json!({"a": "", "b": "c"})));
}

#[test]
fn set_operators() {
    assert!(matches("env in (prod, dev)", json!({"env": "dev"})));
    assert!(!matches("env in (prod,dev)", json!({"env": "qa"})));
    assert!(!matches("env in (prod,dev)", json!({})));
    assert!(matches("env notin (prod,dev)", json!({"env": "qa"})));
    assert!(matches("env notin (prod,dev)", json!({})));
    assert!(!matches("env notin (prod,dev)", json!({"env": "prod"})));
    // `in`/`notin` are ordinary words as keys and values.
    assert!(matches("in in (in,notin)", json!({"in": "notin"})));
    // An omitted item is the empty value.
    assert!(matches("a in ()", json!({"a": ""})));
    assert!(matches("a in (,x)", json!({"a": ""})));
    assert!(matches("a in (x,)", json!({"a": "x"})));
}

#[test]
fn existence_operators() {
    assert!(matches("a", json!({"a": ""})));
    assert!(!matches("a", json!({"b": "x"})));
    assert!(matches("!a", json!({"b": "x"})));
    assert!(!matches("!a", json!({"a": "x"})));
    assert!(matches(" ! a ", json!({})));
}

#[test]
fn integer_comparisons() {
    assert!(matches("n>5", json!({"n": "7"})));
    assert!(!matches("n>5", json!({"n": "5"})));
    assert!(matches("n<5", json!({"n": "4"})));
    assert!(!matches("n<5", json!({"n": "x"})));
    assert!(!matches("n<5", json!({})));
    let e = err("n>x");
    assert!(e.contains("the value must be an integer"), "{e}");
}

#[test]
fn full_example_and_conjunction() {
    let s = "a=b,c!=d,e in (x,y),f notin (z),g,!h";
    let ok = json!({"a": "b", "c": "q", "e": "y", "f": "w", "g": ""});
    assert!(matches(s, ok.clone()));
    let mut with_h = labels(ok);
    with_h.insert("h".into(), json!("1"));
    assert!(!sel(s).matches(Some(&with_h)));
}

#[test]
fn qualified_keys() {
    assert!(matches(
        "app.kubernetes.io/name=web",
        json!({"app.kubernetes.io/name": "web"})
    ));
    assert!(sel("k8s.io/a_b.c-d").matches(Some(&labels(json!({"k8s.io/a_b.c-d": "x"})))));
}

#[test]
fn matches_object_reads_metadata_labels() {
    let s = sel("app=web");
    assert!(s.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
    assert!(!s.matches_object(&json!({"metadata": {}})));
    assert!(!s.matches_object(&json!("not an object")));
    assert!(sel("!app").matches_object(&json!({})));
}

#[test]
fn syntax_errors_name_the_offending_token() {
    assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
    assert_eq!(
        err(",a"),
        "found ',', expected: !, identifier, or 'end of string'"
    );
    assert_eq!(err("a=b=c"), "found '=', expected: ',' or 'end of string'");
    assert_eq!(
        err("a b"),
        "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
    );
    assert_eq!(
        err("a in x"),
        "unable to parse requirement: found 'x', expected: '('"
    );
    assert_eq!(
        err("a in (x y)"),
        "unable to parse requirement: found 'y', expected: ',' or ')'"
    );
    assert_eq!(
        err("a in (x"),
        "unable to parse requirement: found '', expected: ',' or ')'"
    );
    assert_eq!(
        err("a in (=)"),
        "unable to parse requirement: found '=', expected: ',', ')' or identifier"
    );
    assert_eq!(
        err("a=)"),
        "unable to parse requirement: found ')', expected: identifier"
    );
    assert_eq!(
        err("! =a"),
        "unable to parse requirement: found '=', expected: identifier"
    );
    assert_eq!(
        err("!=a"),
        "found '!=', expected: !, identifier, or 'end of string'"
    );
    assert_eq!(err("!a=b"), "found '=', expected: ',' or 'end of string'");
}

#[test]
fn key_and_value_errors() {
    let e = err("-a=b");
    assert!(
        e.starts_with("unable to parse requirement: invalid label key \"-a\": name part must"),
        "{e}"
    );
    let e = err("a/b/c");
    assert!(
        e.contains("invalid label key \"a/b/c\": a qualified name"),
        "{e}"
    );
    let e = err("Example.com/a");
    assert!(
        e.contains("prefix part must be a lowercase RFC 1123 subdomain"),
        "{e}"
    );
    let e = err("/a");
    assert!(e.contains("prefix part must be non-empty"), "{e}");
    let long = "k".repeat(64);
    let e = err(&long);
    assert!(
        e.contains("name part must be no more than 63 characters"),
        "{e}"
    );
    assert!(LabelSelector::parse(&"k".repeat(63)).is_ok());

    let e = err("a=b/c");
    assert_eq!(
        e,
        "unable to parse requirement: invalid label value: \"b/c\" (key \"a\"): a valid label \
         must be an empty string or must consist of alphanumeric characters, '-', '_' or '.', \
         and must start and end with an alphanumeric character"
    );
    let e = err(&format!("a={}", "v".repeat(64)));
    assert!(e.contains("invalid label value"), "{e}");
    assert!(e.contains("must be no more than 63 characters"), "{e}");
    let e = err("a in (ok,-bad)");
    assert!(e.contains("invalid label value: \"-bad\""), "{e}");
    // Non-ASCII never passes validation.
    assert!(err("ä=b").contains("invalid label key"));
}

#[test]
fn error_variants_are_structured() {
    match LabelSelector::parse("a=b/c") {
        Err(SelectorError::Requirement(inner)) => assert!(matches!(
            *inner,
            SelectorError::InvalidLabelValue { ref key, ref value, .. } if key == "a" && value == "b/c"
        )),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn display_is_canonical_and_round_trips() {
    let cases = [
        ("", ""),
        ("a=b", "a=b"),
        ("a==b", "a==b"),
        (" b != c , a ", "a,b!=c"),
        ("e in (y, x, y)", "e in (x,y)"),
        ("f notin (z)", "f notin (z)"),
        ("!h", "!h"),
        ("n>5,m<3", "m<3,n>5"),
        ("a in (,x)", "a in (,x)"),
        ("a in ()", "a in ()"),
        ("a=", "a="),
        (
            "a=b,c!=d,e in (x,y),f notin (z),g,!h",
            "a=b,c!=d,e in (x,y),f notin (z),g,!h",
        ),
    ];
    for (input, canonical) in cases {
        let parsed = sel(input);
        assert_eq!(parsed.to_string(), canonical, "{input}");
        assert_eq!(sel(canonical), parsed, "{input}");
    }
    // Same key twice keeps the written order (stable sort).
    assert_eq!(sel("b,a=1,a!=2").to_string(), "a=1,a!=2,b");
}

#[test]
fn from_json_structured_selector() {
    let s = LabelSelector::from_json(&json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["fe", "be"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "owner", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []}
        ]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.to_string(),
        "app=web,env notin (prod),!legacy,owner,tier in (be,fe)"
    );
    assert!(s.matches(Some(&labels(
        json!({"app": "web", "tier": "fe", "owner": "me"})
    ))));
    assert!(!s.matches(Some(&labels(json!({"app": "web", "tier": "fe"})))));
    assert_eq!(sel(&s.to_string()), s);
}

#[test]
fn from_json_empty_and_null() {
    // `{}` (or empty lists) select everything ...
    for v in [
        json!({}),
        json!({"matchLabels": {}, "matchExpressions": []}),
        json!({"matchLabels": null}),
    ] {
        let s = LabelSelector::from_json(&v).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.is_empty());
        assert!(s.matches(None));
    }
    // ... while null selects nothing.
    let nothing = LabelSelector::from_json(&Value::Null).unwrap_or_else(|e| panic!("{e}"));
    assert!(!nothing.is_empty());
    assert!(!nothing.matches(None));
    assert!(!nothing.matches_object(&json!({"metadata": {"labels": {"a": "b"}}})));
    assert_eq!(nothing, LabelSelector::nothing());
    assert_eq!(nothing.to_string(), "");
    assert_eq!(LabelSelector::everything(), sel(""));
}

#[test]
fn from_json_errors() {
    let e = |v: Value| match LabelSelector::from_json(&v) {
        Ok(s) => panic!("{v} should fail, got {s:?}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        e(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})),
        "\"Gt\" is not a valid label selector operator"
    );
    assert_eq!(
        e(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})),
        "invalid values for label key \"a\": for 'in', 'notin' operators, values set can't be empty"
    );
    assert_eq!(
        e(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
        "invalid values for label key \"a\": values set must be empty for exists and does not exist"
    );
    assert!(e(json!({"matchLabels": {"a": 1}})).starts_with("invalid label selector: matchLabels"));
    assert!(e(json!({"matchLabels": {"a": "b c"}})).starts_with("invalid label value: \"b c\""));
    assert!(e(json!({"matchLabels": {"-a": "b"}})).starts_with("invalid label key \"-a\""));
    assert!(e(json!({"matchExpressions": [{"operator": "Exists"}]}))
        .contains("name part must be non-empty"));
    assert!(e(json!({"matchExpressions": {}})).contains("expected an array"));
    assert!(e(json!({"matchExpressions": [5]})).contains("matchExpressions[0]"));
    assert!(
        e(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}))
            .contains("values: expected strings")
    );
    assert!(e(json!("a=b")).contains("expected an object"));
}

#[test]
fn from_map_is_equality_on_every_pair() {
    let m = labels(json!({"b": "2", "a": "1"}));
    let s = LabelSelector::from_map(&m);
    assert_eq!(s.to_string(), "a=1,b=2");
    assert!(s.matches(Some(&labels(json!({"a": "1", "b": "2", "c": "3"})))));
    assert!(!s.matches(Some(&labels(json!({"a": "1"})))));
    assert_eq!(s, sel("b=2,a=1"));
    // Empty map: empty selector; callers decide what that means.
    let empty = LabelSelector::from_map(&Map::new());
    assert!(empty.is_empty());
    assert!(empty.matches(None));
}

#[test]
fn non_string_label_values() {
    assert!(matches("a=1", json!({"a": 1})));
    assert!(matches("a=true", json!({"a": true})));
    // null and structured values count as absent.
    assert!(matches("!a", json!({"a": null})));
    assert!(!matches("a", json!({"a": ["x"]})));
}
