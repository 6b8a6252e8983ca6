//! ServiceAccount tokens: JWTs signed with an ES256 key the control plane
//! keeps beside its CA (`sa.key`, `sa.pub`), so every API server of a
//! cluster that shares the PKI directory signs and accepts the same
//! tokens. Served too: the OIDC discovery documents through which others
//! verify them.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{json, Value};

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The key tokens are signed with.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Signer {
    /// Loads `sa.key` from `dir`, or makes it (and `sa.pub`) when absent.
    /// Without a directory (plain-HTTP test servers) the key lives only in
    /// memory and tokens end with the process.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = match dir {
            None => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| anyhow::anyhow!("generating the service account key"))?
                .as_ref()
                .to_vec(),
            Some(dir) => {
                let path = dir.join("sa.key");
                if path.exists() {
                    let text = std::fs::read(&path)?;
                    match rustls_pemfile::private_key(&mut text.as_slice())? {
                        Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k)) => {
                            k.secret_pkcs8_der().to_vec()
                        }
                        _ => anyhow::bail!(
                            "{}: expected a PKCS#8 P-256 private key (PRIVATE KEY)",
                            path.display()
                        ),
                    }
                } else {
                    std::fs::create_dir_all(dir)?;
                    let doc = EcdsaKeyPair::generate_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        &rng,
                    )
                    .map_err(|_| anyhow::anyhow!("generating the service account key"))?;
                    super::auth::write_private(&path, &pem("PRIVATE KEY", doc.as_ref()))?;
                    doc.as_ref().to_vec()
                }
            }
        };
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|e| anyhow::anyhow!("service account key: not a P-256 key ({e})"))?;
        let spki = [&P256_SPKI_PREFIX[..], key.public_key().as_ref()].concat();
        if let Some(dir) = dir {
            let public = pem("PUBLIC KEY", &spki);
            let path = dir.join("sa.pub");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(public.as_str()) {
                std::fs::write(&path, public)?;
            }
        }
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(Self { key, kid, rng })
    }

    /// A signed JWT carrying `claims`.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing a token"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// The claims of `token` when this key signed it; nothing else checked.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()
    }

    /// The JWKS document with the public key.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
    }
}

/// The OIDC discovery document for `issuer`.
pub fn openid_configuration(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", issuer.trim_end_matches('/')),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}

/// Whether the object at `key` exists, is not being deleted, and has `uid`.
async fn still_there(state: &super::State, key: String, uid: Option<&Value>) -> Option<()> {
    let obj = state.storage.get(&key).await.ok()??.value;
    (obj.pointer("/metadata/uid") == uid && obj.pointer("/metadata/deletionTimestamp").is_none())
        .then_some(())
}

/// The user a ServiceAccount token proves, when this server signed it for
/// its own audience, it is within its lifetime, and the account (and the
/// pod it is bound to) is still the one it was issued for.
pub async fn authenticate(state: &super::State, token: &str) -> Option<super::auth::User> {
    let claims = state.sa_signer.verify(token)?;
    let issuer = &state.config.service_account_issuer;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
        return None;
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == issuer,
        Some(Value::Array(a)) => a.iter().any(|a| a.as_str() == Some(issuer.as_str())),
        _ => false,
    };
    let now = chrono::Utc::now().timestamp();
    let exp = claims.get("exp").and_then(Value::as_i64)?;
    // A minute of leeway for clocks of servers that share the key.
    let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
    if !aud_ok || now >= exp || nbf > now + 60 {
        return None;
    }
    let k8s = claims.get("kubernetes.io")?;
    let ns = k8s.get("namespace").and_then(Value::as_str)?;
    let sa = k8s.get("serviceaccount")?;
    let name = sa.get("name").and_then(Value::as_str)?;
    still_there(
        state,
        format!("/registry/serviceaccounts/{ns}/{name}"),
        sa.get("uid"),
    )
    .await?;
    if let Some(pod) = k8s.get("pod") {
        let pod_name = pod.get("name").and_then(Value::as_str)?;
        still_there(
            state,
            format!("/registry/pods/{ns}/{pod_name}"),
            pod.get("uid"),
        )
        .await?;
    }
    Some(super::auth::User {
        name: format!("system:serviceaccount:{ns}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_in_key_signs_tokens_the_first_server_accepts() {
        let first = tempfile::tempdir().unwrap();
        let a = Signer::load(Some(first.path())).unwrap();
        let second = tempfile::tempdir().unwrap();
        std::fs::copy(first.path().join("sa.key"), second.path().join("sa.key")).unwrap();
        let b = Signer::load(Some(second.path())).unwrap();
        assert_eq!(
            std::fs::read(first.path().join("sa.pub")).unwrap(),
            std::fs::read(second.path().join("sa.pub")).unwrap()
        );
        let token = b.sign(&json!({"sub": "x"})).unwrap();
        assert_eq!(a.verify(&token).unwrap()["sub"], "x");
        // Another key's token, or a changed one, is refused.
        let other = Signer::load(None).unwrap();
        assert!(other.verify(&token).is_none());
        let mut forged = token.clone();
        forged.insert_str(token.find('.').unwrap() + 1, "e30");
        assert!(a.verify(&forged).is_none());
        assert_eq!(a.jwks()["keys"][0]["kid"], b.jwks()["keys"][0]["kid"]);
    }
}
