//! ServiceAccount tokens of projected volumes: requested from the API
//! server as this node, bound to the pod (so they die with it), cached per
//! audience and lifetime, and renewed before they expire as kubelet
//! renews them, by rewriting the volumes that hold them.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ServiceAccount, ServiceAccountTokenProjection, Volume};
use kube::api::{Api, PostParams};
use kube::ResourceExt;

use super::Worker;
use crate::pods::atomic_writer::File;

/// A token is renewed once it is this old, whatever its lifetime, so a
/// long-lived one that leaked stops working within about a day of the
/// pod's last renewal.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Kubernetes' default `expirationSeconds` of a projected token.
const DEFAULT_SECONDS: i64 = 3600;

/// Wait before asking again after a failed renewal: the token in the
/// volume stays valid meanwhile, so this only has to be short against the
/// fifth of the lifetime that is left.
const RETRY: Duration = Duration::from_secs(10);

/// One token as the API server issued it.
#[derive(Clone, Debug)]
pub(super) struct Issued {
    pub token: String,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl Issued {
    /// When it should be replaced: once 80% of its lifetime has passed, or
    /// after [`MAX_AGE`], whichever is first.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .expires
            .duration_since(self.issued)
            .unwrap_or(Duration::ZERO);
        let at_80 = self.issued + lifetime.mul_f64(0.8);
        at_80.min(self.issued + MAX_AGE)
    }

    /// Whether it must be replaced at `now`.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }
}

/// The pod's tokens, by (audience, expirationSeconds): the same projection
/// in several volumes, or a volume written again for a restarted
/// container, reuses one token until it is due.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    cached: HashMap<(String, i64), Issued>,
    /// When the last renewal failed, so the next try waits [`RETRY`].
    failed_at: Option<Instant>,
}

impl Tokens {
    /// The monotonic instant at which some token is due (or a failed
    /// renewal is retried); `None` without tokens.
    pub fn next_wake(&self, now: SystemTime, mono: Instant) -> Option<Instant> {
        let due = self.cached.values().map(Issued::renew_at).min()?;
        let at = mono + due.duration_since(now).unwrap_or(Duration::ZERO);
        Some(match self.failed_at {
            Some(f) => at.max(f + RETRY),
            None => at,
        })
    }

    /// Whether some cached token is due at `now`.
    pub fn any_due(&self, now: SystemTime) -> bool {
        self.cached.values().any(|t| t.needs_renewal(now))
    }

    /// Whether no token has been requested yet.
    pub fn is_empty(&self) -> bool {
        self.cached.is_empty()
    }
}

/// Whether a volume is projected with at least one token source.
pub(super) fn holds_token(vol: &Volume) -> bool {
    vol.projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .is_some_and(|s| s.iter().any(|s| s.service_account_token.is_some()))
}

impl Worker {
    /// The file of a `serviceAccountToken` source: a cached token while it
    /// is not due, else a new one.
    pub(super) async fn token_file(
        &self,
        src: &ServiceAccountTokenProjection,
        mode: i32,
    ) -> Result<File, String> {
        let audience = src.audience.clone().unwrap_or_default();
        let seconds = src.expiration_seconds.unwrap_or(DEFAULT_SECONDS);
        let key = (audience.clone(), seconds);
        let now = SystemTime::now();
        let cached = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.cached.get(&key).cloned())
            .filter(|t| !t.needs_renewal(now));
        let issued = match cached {
            Some(t) => t,
            None => {
                let requested = self.request_token(&audience, seconds).await;
                let mut tokens = self.tokens.lock().map_err(|e| e.to_string())?;
                match requested {
                    Ok(t) => {
                        tokens.failed_at = None;
                        tokens.cached.insert(key, t.clone());
                        t
                    }
                    Err(e) => {
                        tokens.failed_at = Some(Instant::now());
                        return Err(e);
                    }
                }
            }
        };
        Ok(File {
            path: src.path.clone(),
            data: issued.token.into_bytes(),
            mode: mode as u32,
        })
    }

    /// A TokenRequest for the pod's ServiceAccount, bound to the pod.
    async fn request_token(&self, audience: &str, seconds: i64) -> Result<Issued, String> {
        let ns = self.pod.namespace().unwrap_or_default();
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                // Empty: the API server's own audience.
                audiences: if audience.is_empty() {
                    Vec::new()
                } else {
                    vec![audience.to_string()]
                },
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod.name_any()),
                    uid: Some(self.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.env.client.clone(), &ns);
        let got = api
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("token for service account {ns}/{account}: {e}"))?;
        let status = got
            .status
            .ok_or_else(|| format!("token for service account {ns}/{account}: no status"))?;
        let expires = SystemTime::UNIX_EPOCH
            + Duration::from_secs(status.expiration_timestamp.0.as_second().max(0) as u64);
        // The server may have shortened the lifetime: the one it granted
        // counts, as kubelet reckons it.
        let granted = got.spec.expiration_seconds.unwrap_or(seconds).max(0) as u64;
        Ok(Issued {
            token: status.token,
            issued: expires - Duration::from_secs(granted),
            expires,
        })
    }

    /// When a token of this pod is due for renewal.
    pub(super) fn token_wake(&self) -> Option<Instant> {
        self.tokens
            .lock()
            .ok()?
            .next_wake(SystemTime::now(), Instant::now())
    }

    /// Rewrites the volumes holding tokens when one is due, and once after
    /// an agent restart for volumes a previous agent wrote (their tokens
    /// are not in this agent's cache, so their age is unknown).
    pub(super) async fn renew_tokens(&self) {
        let (due, empty, waiting) = match self.tokens.lock() {
            Ok(t) => (
                t.any_due(SystemTime::now()),
                t.is_empty(),
                t.failed_at.is_some_and(|f| f.elapsed() < RETRY),
            ),
            Err(_) => return,
        };
        if waiting || !(due || empty) {
            return;
        }
        let volumes = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter(|v| holds_token(v));
        for vol in volumes {
            let dir = self.pod_dir().join("volumes").join(&vol.name);
            // Not written yet: the first container start writes it.
            if !dir.exists() {
                continue;
            }
            if let Err(e) = self.write_volume(vol, dir).await {
                tracing::warn!(pod = %self.pod.name_any(), "renewing the token in volume {:?}: {e}", vol.name);
                self.event(
                    "Warning",
                    "FailedMount",
                    format!("Renewing the token in volume {:?}: {e}", vol.name),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: Duration) -> Issued {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Issued {
            token: "t".into(),
            issued,
            expires: issued + lifetime,
        }
    }

    #[test]
    fn an_hour_token_is_renewed_at_48_minutes() {
        let t = issued(Duration::from_secs(3600));
        assert_eq!(t.renew_at(), t.issued + Duration::from_secs(2880));
        assert!(!t.needs_renewal(t.issued + Duration::from_secs(2879)));
        assert!(t.needs_renewal(t.issued + Duration::from_secs(2880)));
    }

    #[test]
    fn a_long_token_is_renewed_after_a_day() {
        let t = issued(Duration::from_secs(7 * 24 * 3600));
        assert_eq!(t.renew_at(), t.issued + MAX_AGE);
        assert!(!t.needs_renewal(t.issued + MAX_AGE - Duration::from_secs(1)));
        assert!(t.needs_renewal(t.issued + MAX_AGE));
    }

    #[test]
    fn an_expired_or_backdated_token_is_due_at_once() {
        let t = issued(Duration::from_secs(600));
        assert!(t.needs_renewal(t.expires + Duration::from_secs(1)));
        // A token whose expiry is before its issue (a clock jump) has no
        // lifetime left to wait out.
        let odd = Issued {
            token: "t".into(),
            issued: t.expires,
            expires: t.issued,
        };
        assert!(odd.needs_renewal(odd.issued));
    }

    #[test]
    fn the_worker_wakes_for_the_first_token_due_and_waits_after_a_failure() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mono = Instant::now();
        let mut tokens = Tokens::default();
        assert_eq!(tokens.next_wake(now, mono), None);
        let hour = Issued {
            token: "a".into(),
            issued: now,
            expires: now + Duration::from_secs(3600),
        };
        let ten_min = Issued {
            token: "b".into(),
            issued: now,
            expires: now + Duration::from_secs(600),
        };
        tokens.cached.insert(("".into(), 3600), hour);
        tokens.cached.insert(("vault".into(), 600), ten_min);
        assert_eq!(
            tokens.next_wake(now, mono),
            Some(mono + Duration::from_secs(480))
        );
        assert!(!tokens.any_due(now + Duration::from_secs(479)));
        assert!(tokens.any_due(now + Duration::from_secs(480)));
        // Overdue: at once, unless a renewal just failed.
        let late = now + Duration::from_secs(500);
        assert_eq!(tokens.next_wake(late, mono), Some(mono));
        tokens.failed_at = Some(mono);
        assert_eq!(tokens.next_wake(late, mono), Some(mono + RETRY));
    }

    #[test]
    fn only_projected_volumes_with_a_token_source_hold_tokens() {
        let vol = |v: serde_json::Value| serde_json::from_value::<Volume>(v).unwrap();
        assert!(holds_token(&vol(
            serde_json::json!({"name": "api", "projected": {"sources": [
            {"configMap": {"name": "kube-root-ca.crt"}},
            {"serviceAccountToken": {"path": "token"}}]}})
        )));
        assert!(!holds_token(&vol(
            serde_json::json!({"name": "cm", "projected": {"sources": [
            {"configMap": {"name": "kube-root-ca.crt"}}]}})
        )));
        assert!(!holds_token(&vol(
            serde_json::json!({"name": "e", "emptyDir": {}})
        )));
    }
}
