//! Property tests: the parsers take untrusted query strings and objects, so
//! they must never panic, and whatever parses must print back to an equal
//! selector.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{FieldSelector, LabelSelector};

/// Strings biased towards selector syntax so the parsers get past the first
/// token often, mixed with arbitrary Unicode.
fn selector_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("x.io/k".to_string()),
                Just("in".to_string()),
                Just("notin".to_string()),
                Just("=".to_string()),
                Just("!".to_string()),
                Just("(".to_string()),
                Just(")".to_string()),
                Just(",".to_string()),
                Just("<".to_string()),
                Just(">".to_string()),
                Just("\\".to_string()),
                Just(" ".to_string()),
                Just("1".to_string()),
                Just("é".to_string()),
                "[a-z0-9./_-]{0,5}".prop_map(|s| s),
            ],
            0..16,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// Mostly well-formed label selector strings (random keys, operators,
/// values and spacing), so the round-trip property sees many real parses.
fn label_selector_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("a".to_string()),
        Just("in".to_string()),
        Just("x.io/k".to_string()),
        "[a-z]([a-z0-9._-]{0,4}[a-z0-9])?",
    ];
    let value = prop_oneof![
        Just(String::new()),
        Just("notin".to_string()),
        "[A-Za-z0-9]([a-z0-9._-]{0,3}[a-z0-9])?",
    ];
    let space = prop_oneof![Just(""), Just(" "), Just("\t ")];
    let requirement = (
        key,
        0..9u8,
        proptest::collection::vec(value, 1..4),
        space,
        any::<i32>(),
    )
        .prop_map(|(k, op, values, ws, n)| {
            let v = values.first().cloned().unwrap_or_default();
            let list = values.join(&format!("{ws},{ws}"));
            match op {
                0 => format!("{ws}{k}{ws}"),
                1 => format!("!{ws}{k}"),
                2 => format!("{k}{ws}={ws}{v}"),
                3 => format!("{k}{ws}=={ws}{v}"),
                4 => format!("{k}{ws}!={ws}{v}"),
                5 => format!("{k} in{ws}({ws}{list}{ws})"),
                6 => format!("{k} notin ({list})"),
                7 => format!("{k}{ws}>{ws}{}", n.unsigned_abs()),
                _ => format!("{k}<{}", n.unsigned_abs()),
            }
        });
    proptest::collection::vec(requirement, 0..5).prop_map(|rs| rs.join(","))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9=,\\\\]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("labels".to_string()),
                    Just("spec".to_string()),
                    Just("nodeName".to_string()),
                    Just("a".to_string()),
                    Just("b".to_string()),
                    Just("matchLabels".to_string()),
                    Just("matchExpressions".to_string()),
                    Just("key".to_string()),
                    Just("operator".to_string()),
                    Just("values".to_string()),
                ],
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn label_parse_never_panics_and_round_trips(
        s in prop_oneof![selector_text(), label_selector_text()],
    ) {
        if let Ok(parsed) = LabelSelector::parse(&s) {
            let printed = parsed.to_string();
            let reparsed = LabelSelector::parse(&printed);
            prop_assert_eq!(reparsed, Ok(parsed));
        }
    }

    #[test]
    fn field_parse_never_panics_and_round_trips(s in selector_text()) {
        if let Ok(parsed) = FieldSelector::parse(&s) {
            let printed = parsed.to_string();
            let reparsed = FieldSelector::parse(&printed);
            prop_assert_eq!(reparsed, Ok(parsed));
        }
    }

    #[test]
    fn matching_arbitrary_objects_never_panics(
        label in selector_text(),
        field in selector_text(),
        obj in json_value(),
    ) {
        if let Ok(sel) = LabelSelector::parse(&label) {
            let _ = sel.matches_object(&obj);
            let _ = sel.matches(obj.as_object());
        }
        if let Ok(sel) = FieldSelector::parse(&field) {
            let _ = sel.matches(&obj);
            let _ = sel.exact("a");
        }
        let built = LabelSelector::from_json(&obj);
        if let Ok(sel) = &built {
            let _ = sel.matches_object(&obj);
            let reparsed = LabelSelector::parse(&sel.to_string());
            if !sel.is_empty() && sel != &LabelSelector::nothing() {
                prop_assert_eq!(reparsed.as_ref(), Ok(sel));
            }
        }
        if let Some(map) = obj.as_object() {
            let sel = LabelSelector::from_map(map);
            let _ = sel.matches(Some(map));
            let _ = sel.to_string();
        }
    }
}
