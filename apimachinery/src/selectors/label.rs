//! Label selectors: the string syntax of the `labelSelector` query parameter,
//! the structured `metav1.LabelSelector`, and the plain key/value maps of
//! Services and ReplicationControllers, all reduced to one list of
//! requirements that must all hold.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use super::label_parser::Parser;
use super::validation::{validate_key, validate_value};
use super::SelectorError;

/// How a requirement relates a label to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operator {
    In,
    NotIn,
    Equals,
    /// Same meaning as `Equals`; kept apart only so `==` prints back as `==`.
    DoubleEquals,
    NotEquals,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One condition on one label key.
impl Operator {
    /// The operator of a structured selector's `matchExpressions` entry.
    pub(super) fn structured(op: &str) -> Result<Self, SelectorError> {
        match op {
            "In" => Ok(Operator::In),
            "NotIn" => Ok(Operator::NotIn),
            "Exists" => Ok(Operator::Exists),
            "DoesNotExist" => Ok(Operator::DoesNotExist),
            _ => Err(SelectorError::InvalidOperator(op.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Requirement {
    key: String,
    op: Operator,
    /// Sorted and deduplicated: the values form a set, and a canonical order
    /// makes equal selectors compare and print equal.
    values: Vec<String>,
}

impl Requirement {
    /// Validates key, values and their count for the operator.
    pub(super) fn new(
        key: String,
        op: Operator,
        mut values: Vec<String>,
    ) -> Result<Self, SelectorError> {
        validate_key(&key)?;
        let count_problem = match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                Some("for 'in', 'notin' operators, values set can't be empty")
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                Some("exact-match compatibility requires one single value")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                Some("values set must be empty for exists and does not exist")
            }
            Operator::GreaterThan | Operator::LessThan if values.len() != 1 => {
                Some("for 'Gt', 'Lt' operators, exactly one value is required")
            }
            _ => None,
        };
        if let Some(reason) = count_problem {
            return Err(SelectorError::InvalidValues {
                key,
                reason: reason.to_string(),
            });
        }
        if matches!(op, Operator::GreaterThan | Operator::LessThan) {
            if let Some(bad) = values.iter().find(|v| v.parse::<i64>().is_err()) {
                return Err(SelectorError::InvalidValues {
                    reason: format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer, not {bad:?}"
                    ),
                    key,
                });
            }
        }
        for value in &values {
            validate_value(&key, value)?;
        }
        values.sort();
        values.dedup();
        Ok(Requirement { key, op, values })
    }

    fn has_value(&self, value: &str) -> bool {
        self.values
            .binary_search_by(|v| v.as_str().cmp(value))
            .is_ok()
    }

    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let actual = labels.and_then(|m| m.get(&self.key)).and_then(label_text);
        self.matches_value(actual.as_deref())
    }

    /// Whether the label value `actual` (`None`: the label is absent)
    /// satisfies the requirement.
    fn matches_value(&self, actual: Option<&str>) -> bool {
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                actual.is_some_and(|v| self.has_value(v))
            }
            // A missing label is "not equal" to anything, as in Kubernetes.
            Operator::NotIn | Operator::NotEquals => actual.is_none_or(|v| !self.has_value(v)),
            Operator::Exists => actual.is_some(),
            Operator::DoesNotExist => actual.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let have = actual.and_then(|v| v.parse::<i64>().ok());
                let want = self.values.first().and_then(|v| v.parse::<i64>().ok());
                match (have, want) {
                    (Some(have), Some(want)) if self.op == Operator::GreaterThan => have > want,
                    (Some(have), Some(want)) => have < want,
                    _ => false,
                }
            }
        }
    }
}

/// The text of a label value. Labels are strings; numbers and booleans (only
/// in objects that skipped validation) count by their printed form, and
/// anything else as an absent label.
fn label_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Operator::Exists => return f.write_str(&self.key),
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::In => return write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => return write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        let value = self.values.first().map(String::as_str).unwrap_or_default();
        write!(f, "{}{op}{value}", self.key)
    }
}

/// A parsed label selector: a conjunction of requirements on an object's
/// `metadata.labels`.
///
/// Three flavours exist, because Kubernetes gives them different meanings:
/// * an *empty* selector (`""`, `{}`, an empty map) matches everything;
/// * a *nothing* selector (a `null` structured selector) matches no object;
/// * otherwise every requirement must hold.
///
/// Equality is semantic for parsed selectors: requirements are kept sorted by
/// key and their values sorted, so `"b=1,a=2"` equals `"a=2,b=1"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// Set only for a null structured selector, which selects nothing.
    selects_nothing: bool,
}

impl LabelSelector {
    /// A selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector that matches no object (what a `null` structured selector
    /// means in Kubernetes).
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            selects_nothing: true,
        }
    }

    /// Parses the `labelSelector` query syntax: comma-separated requirements
    /// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists),
    /// `!k` (does not exist), and `k>n` / `k<n` for integers. Whitespace
    /// around tokens is ignored; `""` (or only whitespace) matches everything.
    /// Inside a value list an omitted item is the empty value, so `k in ()`
    /// requires `k` to be present and empty, like in Kubernetes.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Parser::new(s).selector()?;
        // Stable sort: repeated keys keep their written order, so printing and
        // reparsing gives back an equal selector.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            selects_nothing: false,
        })
    }

    /// Builds a selector from a structured `metav1.LabelSelector` JSON value
    /// (`matchLabels` plus `matchExpressions` with operators In, NotIn,
    /// Exists, DoesNotExist).
    ///
    /// Following Kubernetes, `null` selects *nothing*, while an object with
    /// no `matchLabels` and no `matchExpressions` (e.g. `{}`) selects
    /// *everything*. Unknown fields are ignored; wrong JSON types, invalid
    /// keys or values, and unknown operators are errors.
    pub fn from_json(v: &Value) -> Result<Self, SelectorError> {
        let obj = match v {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(obj) => obj,
            other => {
                return Err(SelectorError::Malformed(format!(
                    "expected an object, got {}",
                    json_kind(other)
                )))
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Value::String(value) = value else {
                        return Err(SelectorError::Malformed(format!(
                            "matchLabels[{key:?}]: expected a string, got {}",
                            json_kind(value)
                        )));
                    };
                    requirements.push(Requirement::new(
                        key.clone(),
                        Operator::Equals,
                        vec![value.clone()],
                    )?);
                }
            }
            Some(other) => {
                return Err(SelectorError::Malformed(format!(
                    "matchLabels: expected an object, got {}",
                    json_kind(other)
                )))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (i, expr) in exprs.iter().enumerate() {
                    requirements.push(expression(i, expr)?);
                }
            }
            Some(other) => {
                return Err(SelectorError::Malformed(format!(
                    "matchExpressions: expected an array, got {}",
                    json_kind(other)
                )))
            }
        }
        Ok(Self::from_requirements(requirements))
    }

    /// A selector of `requirements` (in any order) that must all hold.
    pub(super) fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            selects_nothing: false,
        }
    }

    /// Builds an equality selector from a plain label map, as Services and
    /// ReplicationControllers carry in `spec.selector`.
    ///
    /// Nothing is validated (the map was validated when its object was
    /// stored) and non-string values count by their JSON text. An empty map
    /// gives an empty selector, which *matches everything*; controllers that
    /// want Kubernetes' "an empty Service/RC selector selects no pods" must
    /// check [`is_empty`](Self::is_empty) themselves.
    pub fn from_map(m: &Map<String, Value>) -> Self {
        let mut requirements: Vec<Requirement> = m
            .iter()
            .map(|(key, value)| Requirement {
                key: key.clone(),
                op: Operator::Equals,
                values: vec![match value {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                }],
            })
            .collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            selects_nothing: false,
        }
    }

    /// Whether a label set satisfies every requirement. `None` (an object
    /// without labels) behaves like an empty label set.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        !self.selects_nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// [`matches`](Self::matches) on a typed label map, as k8s-openapi
    /// objects carry it.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selects_nothing
            && self
                .requirements
                .iter()
                .all(|r| r.matches_value(labels.get(&r.key).map(String::as_str)))
    }

    /// [`matches`](Self::matches) on `obj.metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.matches(labels)
    }

    /// True when the selector does not restrict anything (it matches every
    /// object). A "nothing" selector is not empty.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.selects_nothing
    }
}

/// Canonical string form, parseable again by [`LabelSelector::parse`]:
/// requirements sorted by key, values sorted, joined by `,`. An empty
/// selector prints as `""`; so does a "nothing" selector, as in Kubernetes,
/// which has no string syntax for it.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// One `matchExpressions` entry.
fn expression(i: usize, expr: &Value) -> Result<Requirement, SelectorError> {
    let at = |what: &str, got: &Value| {
        SelectorError::Malformed(format!(
            "matchExpressions[{i}].{what}, got {}",
            json_kind(got)
        ))
    };
    let Value::Object(expr) = expr else {
        return Err(at("expected an object", expr));
    };
    let key = match expr.get("key") {
        Some(Value::String(k)) => k.clone(),
        // A missing key is reported by key validation, naming the empty key.
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(at("key: expected a string", other)),
    };
    let op = match expr.get("operator") {
        Some(Value::String(op)) => Operator::structured(op)?,
        None | Some(Value::Null) => return Err(SelectorError::InvalidOperator(String::new())),
        Some(other) => return Err(at("operator: expected a string", other)),
    };
    let values = match expr.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(at("values: expected strings", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(at("values: expected an array", other)),
    };
    Requirement::new(key, op, values)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
