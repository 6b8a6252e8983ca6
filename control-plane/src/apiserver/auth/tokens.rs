//! Bearer tokens: the `--token-auth-file` table and the header they come in.

use std::path::Path;

use anyhow::Context;

use super::User;

/// Bearer tokens from a CSV file: `token,user,uid[,"group1,group2"]`.
#[derive(Default)]
pub struct Tokens(Vec<(String, User)>);

impl Tokens {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, groups) = match line.split_once(",\"") {
                Some((h, g)) => (h, g.trim_end_matches('"')),
                None => (line, ""),
            };
            let fields: Vec<&str> = head.split(',').collect();
            anyhow::ensure!(
                fields.len() >= 2,
                "{}:{}: expected token,user,uid[,\"groups\"]",
                path.display(),
                n + 1
            );
            let mut groups: Vec<String> = groups
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect();
            groups.push("system:authenticated".into());
            out.push((
                fields[0].to_string(),
                User {
                    name: fields[1].to_string(),
                    groups,
                },
            ));
        }
        Ok(Self(out))
    }

    /// The user whose token this is. Every token is compared in full and
    /// in constant time, so the time an answer takes tells nothing about
    /// how much of a guess was right.
    pub fn user(&self, token: &str) -> Option<User> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for (t, u) in &self.0 {
            if bool::from(t.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(u);
            }
        }
        found.cloned()
    }
}

/// The token of an `Authorization: Bearer TOKEN` header. The scheme is
/// matched without regard to case (RFC 7235), as kube-apiserver does.
pub fn bearer_token(header: &str) -> Option<&str> {
    let mut fields = header.split_whitespace();
    let scheme = fields.next()?;
    let token = fields.next()?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for h in ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer\tabc"] {
            assert_eq!(bearer_token(h), Some("abc"), "{h:?}");
        }
        for h in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(bearer_token(h), None, "{h:?}");
        }
    }
}
