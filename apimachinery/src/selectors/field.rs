//! Field selectors (`fieldSelector` query parameter): a conjunction of
//! `field=value` / `field!=value` terms over an object's JSON, plus the list
//! of fields each resource lets clients filter by.

use std::fmt;

use serde_json::Value;

use super::SelectorError;

/// `=` and `==` mean the same, so both parse to `Equals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FieldOp {
    Equals,
    NotEquals,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Term {
    field: String,
    op: FieldOp,
    /// Unescaped.
    value: String,
}

/// A parsed field selector: every term must hold.
///
/// Terms are kept sorted, so equality and [`Display`](fmt::Display) do not
/// depend on the order the client wrote them in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<Term>,
}

impl FieldSelector {
    /// Parses comma-separated terms `path=value`, `path==value` and
    /// `path!=value`. In values, `\,`, `\=` and `\\` stand for `,`, `=` and
    /// `\`; any other backslash sequence, or a bare `=` in a value, is an
    /// error. The field is everything before the first operator (no escapes
    /// there). Empty terms are skipped, so `""` matches everything.
    ///
    /// Unlike Kubernetes, whitespace around the field and the value is
    /// trimmed, so `status.phase = Running` works instead of naming the
    /// unsupported field `status.phase `.
    ///
    /// Parsing does not check that fields exist; see
    /// [`check_supported`](Self::check_supported).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for raw in split_terms(s) {
            if raw.trim().is_empty() {
                continue;
            }
            let Some((field, op, value)) = split_term(&raw) else {
                return Err(SelectorError::FieldTerm {
                    selector: s.to_string(),
                    term: raw,
                });
            };
            terms.push(Term {
                field: field.trim().to_string(),
                op,
                value: unescape(value.trim())?,
            });
        }
        terms.sort();
        Ok(FieldSelector { terms })
    }

    /// Rejects the selector unless every term's field is in `supported`
    /// (usually [`supported_fields`] of the resource being listed). The error
    /// names the first unsupported field: `field label not supported: X`.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .terms
            .iter()
            .find(|t| !supported.contains(&t.field.as_str()))
        {
            Some(t) => Err(SelectorError::UnsupportedField(t.field.clone())),
            None => Ok(()),
        }
    }

    /// Whether `obj` satisfies every term.
    ///
    /// Fields are dotted paths into the JSON. As in Kubernetes, where the
    /// fields of a Go struct always exist, a missing field compares as its
    /// zero value: `""` in general (so `spec.nodeName=` finds unscheduled
    /// pods), `false` for `spec.hostNetwork` / `spec.unschedulable` and `0`
    /// for `status.replicas` / `status.successful`. Numbers and booleans
    /// compare by their string form; arrays and objects by their JSON text.
    /// The events field `source` reads `source.component`, as in Kubernetes.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = field_text(obj, &t.field);
            match t.op {
                FieldOp::Equals => actual == t.value,
                FieldOp::NotEquals => actual != t.value,
            }
        })
    }

    /// True when the selector has no terms and so matches everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value an `=`/`==` term requires of `field`, if there is one. Lets
    /// the server turn `metadata.name=X` into a direct lookup; the selector
    /// must still be applied, since other terms may exclude the object.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.op == FieldOp::Equals && t.field == field)
            .map(|t| t.value.as_str())
    }
}

/// Canonical form, parseable again: terms sorted, `==` written as `=`, values
/// escaped.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&t.field)?;
            // A field ending in `!` followed by `=` would read back as `!=`;
            // a space keeps them apart and is trimmed again on parsing.
            if t.op == FieldOp::Equals && t.field.ends_with('!') {
                f.write_str(" ")?;
            }
            f.write_str(match t.op {
                FieldOp::Equals => "=",
                FieldOp::NotEquals => "!=",
            })?;
            f.write_str(&escape(&t.value))?;
        }
        Ok(())
    }
}

/// Splits at commas not preceded by a backslash; escapes stay in the terms
/// (with their backslash) for [`unescape`] to resolve later.
fn split_terms(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    terms.push(current);
    terms
}

/// Splits a term at the first operator. At each position `!=` is tried
/// before `==` before `=`, so `a==b` is `a` `==` `b`, not `a` `=` `=b`.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    term.char_indices().find_map(|(i, _)| {
        let rest = term.get(i..)?;
        let (op, len) = if rest.starts_with("!=") {
            (FieldOp::NotEquals, 2)
        } else if rest.starts_with("==") {
            (FieldOp::Equals, 2)
        } else if rest.starts_with('=') {
            (FieldOp::Equals, 1)
        } else {
            return None;
        };
        Some((term.get(..i)?, op, term.get(i + len..)?))
    })
}

fn unescape(raw: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(other) => return Err(SelectorError::InvalidEscape(format!("\\{other}"))),
                None => return Err(SelectorError::InvalidEscape("\\".to_string())),
            },
            // Bare `=` is ambiguous with an operator, so values must escape it.
            ',' | '=' => return Err(SelectorError::UnescapedChar(c)),
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The string a field selector compares for `field` in `obj`.
fn field_text(obj: &Value, field: &str) -> String {
    // Kubernetes exposes a few fields under a different path or with a Go
    // zero value when unset; mirror those so selectors behave the same.
    let (path, zero) = match field {
        "source" => ("source.component", ""),
        "spec.hostNetwork" | "spec.unschedulable" => (field, "false"),
        "status.replicas" | "status.successful" => (field, "0"),
        _ => (field, ""),
    };
    let mut current = obj;
    for segment in path.split('.') {
        match current.get(segment) {
            Some(next) => current = next,
            None => return zero.to_string(),
        }
    }
    match current {
        Value::Null => zero.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// The fields a resource (plural name, e.g. `pods`; a `.group` suffix such as
/// `jobs.batch` is ignored) can be filtered by, as Kubernetes allows them.
/// Every resource supports `metadata.name` and `metadata.namespace`; unknown
/// resources support only those.
pub fn supported_fields(resource: &str) -> Vec<&'static str> {
    let plural = resource
        .split('.')
        .next()
        .unwrap_or(resource)
        .to_ascii_lowercase();
    let extra: &[&'static str] = match plural.as_str() {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "events" => &[
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
        ],
        "nodes" => &["spec.unschedulable"],
        "namespaces" => &["status.phase"],
        "secrets" => &["type"],
        "services" => &["spec.clusterIP", "spec.type"],
        "replicationcontrollers" | "replicasets" => &["status.replicas"],
        "jobs" => &["status.successful"],
        "certificatesigningrequests" => &["spec.signerName"],
        _ => &[],
    };
    let mut fields = vec!["metadata.name", "metadata.namespace"];
    fields.extend_from_slice(extra);
    fields
}
