//! Taints and tolerations: which tolerations let a pod onto (or keep it on)
//! a tainted node. The scheduler filters nodes with it and node lifecycle
//! decides evictions with it, so both read a toleration the same way.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Does toleration `t` tolerate `taint` (Kubernetes' ToleratesTaint)? An
/// empty effect matches every effect; an empty key with `Exists` matches
/// every taint; `Equal` (the default) needs the key and value to match.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// How long `tolerations` let a pod stay on a node with the NoExecute
/// `taint`: `None` when none tolerates it (evict now), `Some(None)` when a
/// matching toleration has no time limit, otherwise the shortest limit in
/// seconds (negative limits count as zero), as Kubernetes' taint manager
/// reads them.
pub fn toleration_seconds(tolerations: &[Toleration], taint: &Taint) -> Option<Option<i64>> {
    let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
    if matching.is_empty() {
        return None;
    }
    Some(
        matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .map(|s| s.max(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
        seconds: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: op.map(str::to_string),
            value: value.map(str::to_string),
            effect: effect.map(str::to_string),
            toleration_seconds: seconds,
        }
    }

    #[test]
    fn equal_needs_key_and_value() {
        let t = taint("dedicated", Some("gpu"), "NoSchedule");
        assert!(tolerates(
            &toleration(Some("dedicated"), None, Some("gpu"), None, None),
            &t
        ));
        assert!(tolerates(
            &toleration(
                Some("dedicated"),
                Some("Equal"),
                Some("gpu"),
                Some("NoSchedule"),
                None
            ),
            &t
        ));
        assert!(!tolerates(
            &toleration(Some("dedicated"), None, Some("cpu"), None, None),
            &t
        ));
        assert!(!tolerates(
            &toleration(Some("other"), None, Some("gpu"), None, None),
            &t
        ));
        // Equal with an empty key tolerates nothing.
        assert!(!tolerates(
            &toleration(None, None, Some("gpu"), None, None),
            &t
        ));
    }

    #[test]
    fn exists_ignores_the_value_and_an_empty_key_matches_all() {
        let t = taint("node.kubernetes.io/unreachable", None, "NoExecute");
        assert!(tolerates(
            &toleration(
                Some("node.kubernetes.io/unreachable"),
                Some("Exists"),
                None,
                None,
                None
            ),
            &t
        ));
        assert!(tolerates(
            &toleration(None, Some("Exists"), None, None, None),
            &t
        ));
        assert!(!tolerates(
            &toleration(
                Some("node.kubernetes.io/not-ready"),
                Some("Exists"),
                None,
                None,
                None
            ),
            &t
        ));
        assert!(!tolerates(
            &toleration(None, Some("Bogus"), None, None, None),
            &t
        ));
    }

    #[test]
    fn effect_must_match_unless_empty() {
        let t = taint("k", None, "NoExecute");
        assert!(tolerates(
            &toleration(Some("k"), Some("Exists"), None, Some(""), None),
            &t
        ));
        assert!(tolerates(
            &toleration(Some("k"), Some("Exists"), None, Some("NoExecute"), None),
            &t
        ));
        assert!(!tolerates(
            &toleration(Some("k"), Some("Exists"), None, Some("NoSchedule"), None),
            &t
        ));
    }

    #[test]
    fn toleration_seconds_takes_the_shortest_bounded() {
        let t = taint("node.kubernetes.io/unreachable", None, "NoExecute");
        let exists = |secs| {
            toleration(
                Some("node.kubernetes.io/unreachable"),
                Some("Exists"),
                None,
                Some("NoExecute"),
                secs,
            )
        };
        let unrelated = toleration(Some("other"), Some("Exists"), None, None, Some(1));
        assert_eq!(toleration_seconds(&[], &t), None);
        assert_eq!(
            toleration_seconds(std::slice::from_ref(&unrelated), &t),
            None
        );
        assert_eq!(toleration_seconds(&[exists(None)], &t), Some(None));
        assert_eq!(
            toleration_seconds(&[exists(Some(300)), exists(Some(30)), unrelated], &t),
            Some(Some(30))
        );
        assert_eq!(
            toleration_seconds(&[exists(None), exists(Some(60))], &t),
            Some(Some(60))
        );
        assert_eq!(toleration_seconds(&[exists(Some(-5))], &t), Some(Some(0)));
    }
}
