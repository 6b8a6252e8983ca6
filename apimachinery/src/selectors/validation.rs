//! Syntax rules for label keys and values, the same ones Kubernetes applies
//! (`IsQualifiedName` for keys, `IsValidLabelValue` for values), so a selector
//! we accept could also be stored on a real cluster and vice versa.

use super::SelectorError;

/// Longest name part of a key, and longest value (a DNS label's length).
const NAME_MAX: usize = 63;
/// Longest key prefix (a DNS subdomain's length).
const PREFIX_MAX: usize = 253;

const NAME_CHARSET: &str = "must consist of alphanumeric characters, '-', '_' or '.', \
     and must start and end with an alphanumeric character";

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 characters.
pub(crate) fn validate_key(key: &str) -> Result<(), SelectorError> {
    let problems = key_problems(key);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SelectorError::InvalidLabelKey {
            key: key.to_string(),
            // Several problems at once are joined, as Kubernetes does, so a
            // user fixes them all in one go.
            reason: problems.join("; "),
        })
    }
}

/// Checks a label value: empty, or at most 63 characters of the name charset.
pub(crate) fn validate_value(key: &str, value: &str) -> Result<(), SelectorError> {
    let reason = if value.len() > NAME_MAX {
        format!("must be no more than {NAME_MAX} characters")
    } else if !value.is_empty() && !is_name(value) {
        format!("a valid label must be an empty string or {NAME_CHARSET}")
    } else {
        return Ok(());
    };
    Err(SelectorError::InvalidLabelValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    })
}

fn key_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut parts = key.split('/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (None, name),
        (Some(prefix), Some(name), None) => (Some(prefix), name),
        _ => {
            problems.push(format!(
                "a qualified name {NAME_CHARSET}, with an optional DNS subdomain prefix and '/' \
                 (e.g. 'example.com/MyName')"
            ));
            return problems;
        }
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            problems.push("prefix part must be non-empty".to_string());
        } else {
            if prefix.len() > PREFIX_MAX {
                problems.push(format!(
                    "prefix part must be no more than {PREFIX_MAX} characters"
                ));
            }
            if !is_dns_subdomain(prefix) {
                problems.push(
                    "prefix part must be a lowercase RFC 1123 subdomain: lower case alphanumeric \
                     characters, '-' or '.', starting and ending with an alphanumeric character"
                        .to_string(),
                );
            }
        }
    }
    if name.is_empty() {
        problems.push("name part must be non-empty".to_string());
    } else {
        if name.len() > NAME_MAX {
            problems.push(format!(
                "name part must be no more than {NAME_MAX} characters"
            ));
        }
        if !is_name(name) {
            problems.push(format!("name part {NAME_CHARSET}"));
        }
    }
    problems
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` without a regex engine.
fn is_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Dot-separated lowercase DNS labels, each starting and ending alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        edge(bytes.first())
            && edge(bytes.last())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    })
}
