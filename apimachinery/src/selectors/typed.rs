//! The typed `metav1.LabelSelector` controllers and the scheduler read
//! from k8s-openapi objects, matched by the same requirements as the
//! JSON and query-string forms so every component agrees on what a
//! selector selects.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

use super::label::{Operator, Requirement};
use super::{LabelSelector, SelectorError};

impl LabelSelector {
    /// Builds a selector from a typed `metav1.LabelSelector`: `matchLabels`
    /// plus `matchExpressions` (In, NotIn, Exists, DoesNotExist). One with
    /// neither selects everything; invalid keys, values or operators are
    /// errors, as in [`from_json`](Self::from_json).
    pub fn from_typed(sel: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(
                key.clone(),
                Operator::Equals,
                vec![value.clone()],
            )?);
        }
        for e in sel.match_expressions.iter().flatten() {
            requirements.push(Requirement::new(
                e.key.clone(),
                Operator::structured(&e.operator)?,
                e.values.clone().unwrap_or_default(),
            )?);
        }
        Ok(Self::from_requirements(requirements))
    }
}

/// Does `selector` select an object labelled `labels`? A missing selector
/// selects nothing and an empty one everything (Kubernetes'
/// LabelSelectorAsSelector); an invalid one selects nothing, since
/// Kubernetes' controllers treat a selector they cannot convert that way.
pub fn selector_matches(
    selector: Option<&metav1::LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector
        .and_then(|s| LabelSelector::from_typed(s).ok())
        .is_some_and(|s| s.matches_labels(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use metav1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        exprs: Vec<LabelSelectorRequirement>,
    ) -> metav1::LabelSelector {
        metav1::LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn missing_selects_nothing_and_empty_everything() {
        let l = labels(&[("app", "web")]);
        assert!(!selector_matches(None, &l));
        assert!(selector_matches(Some(&selector(&[], vec![])), &l));
        assert!(selector_matches(Some(&selector(&[], vec![])), &labels(&[])));
    }

    #[test]
    fn match_labels_must_all_hold() {
        let s = selector(&[("app", "web"), ("tier", "front")], vec![]);
        assert!(selector_matches(
            Some(&s),
            &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
        ));
        assert!(!selector_matches(Some(&s), &labels(&[("app", "web")])));
        assert!(!selector_matches(
            Some(&s),
            &labels(&[("app", "web"), ("tier", "back")])
        ));
    }

    #[test]
    fn expression_operators() {
        let l = labels(&[("env", "prod"), ("app", "web")]);
        let one = |e| selector_matches(Some(&selector(&[], vec![e])), &l);
        assert!(one(expr("env", "In", &["dev", "prod"])));
        assert!(!one(expr("env", "In", &["dev"])));
        assert!(!one(expr("missing", "In", &["dev"])));
        assert!(one(expr("env", "NotIn", &["dev"])));
        assert!(!one(expr("env", "NotIn", &["prod"])));
        // An absent label is "not in" any set, as in Kubernetes.
        assert!(one(expr("missing", "NotIn", &["dev"])));
        assert!(one(expr("app", "Exists", &[])));
        assert!(!one(expr("missing", "Exists", &[])));
        assert!(one(expr("missing", "DoesNotExist", &[])));
        assert!(!one(expr("app", "DoesNotExist", &[])));
    }

    #[test]
    fn labels_and_expressions_combine() {
        let s = selector(&[("app", "web")], vec![expr("env", "NotIn", &["dev"])]);
        assert!(selector_matches(
            Some(&s),
            &labels(&[("app", "web"), ("env", "prod")])
        ));
        assert!(!selector_matches(
            Some(&s),
            &labels(&[("app", "web"), ("env", "dev")])
        ));
        assert!(!selector_matches(Some(&s), &labels(&[("env", "prod")])));
    }

    #[test]
    fn invalid_selectors_select_nothing() {
        let l = labels(&[("env", "prod")]);
        for bad in [
            expr("env", "Gt", &["1"]),
            expr("env", "Bogus", &["prod"]),
            expr("env", "In", &[]),
            expr("env", "Exists", &["prod"]),
            expr("not a key!", "Exists", &[]),
        ] {
            let s = selector(&[], vec![bad.clone()]);
            assert!(LabelSelector::from_typed(&s).is_err(), "{bad:?}");
            assert!(!selector_matches(Some(&s), &l), "{bad:?}");
        }
    }

    #[test]
    fn agrees_with_the_json_form() {
        let s = selector(
            &[("app", "web")],
            vec![
                expr("env", "In", &["prod", "dev"]),
                expr("canary", "DoesNotExist", &[]),
            ],
        );
        let json = serde_json::to_value(&s).expect("selector serializes");
        let from_json = LabelSelector::from_json(&json).expect("valid selector");
        assert_eq!(
            LabelSelector::from_typed(&s).expect("valid selector"),
            from_json
        );
        assert_eq!(from_json.to_string(), "app=web,!canary,env in (dev,prod)");
    }
}
