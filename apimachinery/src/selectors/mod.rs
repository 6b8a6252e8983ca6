//! Label and field selectors, as the API server receives them in the
//! `labelSelector` / `fieldSelector` query parameters and as objects embed
//! them (`spec.selector` of Deployments, Services, ...).
//!
//! Everything here parses untrusted input (query strings, user objects), so no
//! function panics on any input; malformed input yields a [`SelectorError`]
//! whose message names the offending part, in wording close to Kubernetes' so
//! kubectl users see familiar errors.

mod field;
mod label;
mod label_parser;
mod typed;
mod validation;

#[cfg(test)]
mod field_tests;
#[cfg(test)]
mod label_tests;
#[cfg(test)]
mod proptests;

pub use field::{supported_fields, FieldSelector};
pub use label::LabelSelector;
pub use typed::selector_matches;

/// Why a label or field selector was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector string does not follow the grammar, e.g.
    /// `found ')', expected: identifier`.
    #[error("{0}")]
    Syntax(String),
    /// A single requirement of a label selector string failed to parse; wraps
    /// the underlying cause the way Kubernetes prefixes it.
    #[error("unable to parse requirement: {0}")]
    Requirement(Box<SelectorError>),
    /// A label key that is not a valid qualified name.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidLabelKey {
        /// The rejected key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A label value that is too long or has characters labels cannot hold.
    #[error("invalid label value: {value:?} (key {key:?}): {reason}")]
    InvalidLabelValue {
        /// The key the value belongs to.
        key: String,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value set does not suit the operator (empty `in` list, a
    /// non-integer for `>`/`<`, values given to `Exists`, ...).
    #[error("invalid values for label key {key:?}: {reason}")]
    InvalidValues {
        /// The key of the offending requirement.
        key: String,
        /// What is wrong with the values.
        reason: String,
    },
    /// A `matchExpressions` operator other than In, NotIn, Exists, DoesNotExist.
    #[error("{0:?} is not a valid label selector operator")]
    InvalidOperator(String),
    /// A structured (`metav1.LabelSelector`) selector of the wrong JSON shape.
    #[error("invalid label selector: {0}")]
    Malformed(String),
    /// A field selector term without `=`, `==` or `!=`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    FieldTerm {
        /// The whole selector as given.
        selector: String,
        /// The term that has no operator.
        term: String,
    },
    /// A backslash in a field selector value not followed by `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscape(String),
    /// A bare `=` (or `,`) inside a field selector value.
    #[error("invalid field selector: unescaped character in value: {0:?}")]
    UnescapedChar(char),
    /// A field selector names a field the resource cannot be filtered by.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}
