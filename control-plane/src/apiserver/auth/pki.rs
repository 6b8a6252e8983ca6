//! The cluster CA and what it signs: the serving, admin, node and
//! kubelet-client certificates, and the kubeconfigs that carry them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Files in the certificate directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub(super) fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    fn admin_cert(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }
    fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
}

pub fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data.as_bytes())?;
    Ok(())
}

fn client_params(cn: &str, orgs: &[&str]) -> anyhow::Result<CertificateParams> {
    leaf_params(cn, orgs, vec![ExtendedKeyUsagePurpose::ClientAuth])
}

/// A CA-signed leaf certificate's parameters for `usages`.
fn leaf_params(
    cn: &str,
    orgs: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    p.extended_key_usages = usages;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    if orgs.contains(&"system:nodes") {
        // A node's key lives on a machine that may be lost or taken over;
        // its certificate lapses instead of outliving it. Renewing is
        // making a new one (`install.sh add-node`, `control-plane kubeconfig`).
        let day = |d: chrono::DateTime<chrono::Utc>| {
            use chrono::Datelike;
            rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
        };
        let now = chrono::Utc::now();
        // From the day before: a node whose clock is a little behind
        // accepts it at once.
        p.not_before = day(now - chrono::Duration::days(1));
        p.not_after = day(now + chrono::Duration::days(NODE_CERT_DAYS));
    }
    Ok(p)
}

/// How long a node's client certificate is valid, in days.
pub const NODE_CERT_DAYS: i64 = 365;

/// A subject alternative name: an IP address, or else a DNS name.
fn san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.to_string()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name}: not a DNS name or IP address"))?,
        ),
    })
}

/// The API server's certificate: its usual names and addresses plus `sans`.
fn serving_certificate(
    sans: &[String],
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    let mut serving = CertificateParams::new(Vec::<String>::new())?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    for n in names.iter().chain(sans.iter()) {
        serving.subject_alt_names.push(san(n)?);
    }
    for ip in ["127.0.0.1", "::1", "10.96.0.1"] {
        serving
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse()?));
    }
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, ca_cert, ca_key)?;
    Ok((serving_cert, serving_key))
}

/// The CA's certificate (as an issuer) and key, read from the directory.
fn load_ca(pki: &Pki) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let ca_pem = std::fs::read_to_string(pki.ca_cert())
        .with_context(|| format!("reading {}", pki.ca_cert().display()))?;
    let key_pem = std::fs::read_to_string(pki.ca_key())
        .with_context(|| format!("reading {}", pki.ca_key().display()))?;
    let ca_key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{}: not a PEM private key", pki.ca_key().display()))?;
    // Re-signing the CA's own parameters with its key gives an issuer with
    // the same subject and key as the certificate on disk.
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
        .with_context(|| format!("{}: not a CA certificate", pki.ca_cert().display()))?
        .self_signed(&ca_key)?;
    Ok((ca_cert, ca_key))
}

/// Makes the cluster CA in `dir` unless one is there. Returns whether it
/// made one. Only `ca.crt` and `ca.key`: an API server started on the
/// directory later completes it, and other control planes can be given a
/// copy of the pair before their first start.
pub fn ensure_ca(dir: &Path) -> anyhow::Result<bool> {
    let pki = Pki {
        dir: dir.to_path_buf(),
    };
    match (pki.ca_cert().exists(), pki.ca_key().exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => anyhow::bail!(
            "{} holds only one of ca.crt and ca.key: restore the other, or remove both to make a new CA",
            dir.display()
        ),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = new_ca()?;
    write_private(&pki.ca_key(), &ca_key.serialize_pem())?;
    std::fs::write(pki.ca_cert(), ca_cert.pem())?;
    Ok(true)
}

fn new_ca() -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "kestrel-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    Ok((ca_cert, ca_key))
}

/// What a certificate from [`issue`] is for.
pub struct CertRequest<'a> {
    pub common_name: &'a str,
    pub organizations: &'a [String],
    /// DNS names or IP addresses it is valid for (servers).
    pub sans: &'a [String],
    pub server: bool,
    pub client: bool,
}

/// A new key and a certificate for it signed by the cluster CA, as PEM
/// (certificate, key): for etcd members and their clients, which trust the
/// same CA as the API server.
pub fn issue(pki: &Pki, req: &CertRequest) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(
        req.server || req.client,
        "a certificate must be for a server, a client or both"
    );
    let (ca_cert, ca_key) = load_ca(pki)?;
    let orgs: Vec<&str> = req.organizations.iter().map(String::as_str).collect();
    let usages = [
        (req.server, ExtendedKeyUsagePurpose::ServerAuth),
        (req.client, ExtendedKeyUsagePurpose::ClientAuth),
    ]
    .into_iter()
    .filter_map(|(wanted, usage)| wanted.then_some(usage))
    .collect();
    let mut params = leaf_params(req.common_name, &orgs, usages)?;
    for n in req.sans {
        params.subject_alt_names.push(san(n)?);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes the CA, serving and admin certificates unless they exist.
/// `sans` are extra names and addresses for the serving certificate.
pub fn ensure_pki(dir: &Path, sans: &[String]) -> anyhow::Result<Pki> {
    let pki = Pki {
        dir: dir.to_path_buf(),
    };
    if pki.ca_cert().exists() && pki.ca_key().exists() {
        // The serving certificate is re-issued from the same CA on every
        // start, so a changed --tls-san takes effect; clients trust the CA,
        // not this certificate. A CA copied in from another control plane
        // (with nothing else) is kept, so every API server of a cluster
        // shares it; the admin certificate is made when missing.
        let (ca_cert, ca_key) = load_ca(&pki)?;
        let (cert, key) = serving_certificate(sans, &ca_cert, &ca_key)?;
        write_private(&pki.serving_key(), &key.serialize_pem())?;
        std::fs::write(pki.serving_cert(), cert.pem())?;
        if !pki.admin_cert().exists() || !pki.admin_key().exists() {
            let admin_key = KeyPair::generate()?;
            let admin_cert = client_params("kubernetes-admin", &["system:masters"])?
                .signed_by(&admin_key, &ca_cert, &ca_key)?;
            write_private(&pki.admin_key(), &admin_key.serialize_pem())?;
            std::fs::write(pki.admin_cert(), admin_cert.pem())?;
        }
        return Ok(pki);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = new_ca()?;

    let (serving_cert, serving_key) = serving_certificate(sans, &ca_cert, &ca_key)?;

    let admin_key = KeyPair::generate()?;
    let admin_cert = client_params("kubernetes-admin", &["system:masters"])?
        .signed_by(&admin_key, &ca_cert, &ca_key)?;

    write_private(&pki.ca_key(), &ca_key.serialize_pem())?;
    write_private(&pki.serving_key(), &serving_key.serialize_pem())?;
    write_private(&pki.admin_key(), &admin_key.serialize_pem())?;
    std::fs::write(pki.serving_cert(), serving_cert.pem())?;
    std::fs::write(pki.admin_cert(), admin_cert.pem())?;
    // Written last: its presence means the set is complete.
    std::fs::write(pki.ca_cert(), ca_cert.pem())?;
    Ok(pki)
}

/// A kubeconfig for `server` with a new client certificate for `user` in
/// `groups`, signed by the cluster CA (for nodes: `system:node:NAME` in
/// `system:nodes`).
pub fn client_kubeconfig(
    pki: &Pki,
    server: &str,
    user: &str,
    groups: &[&str],
    expires_in: Option<std::time::Duration>,
) -> anyhow::Result<String> {
    let ca_pem = std::fs::read_to_string(pki.ca_cert())
        .with_context(|| format!("reading {}", pki.ca_cert().display()))?;
    let (ca, ca_key) = load_ca(pki)?;
    let key = KeyPair::generate()?;
    let mut params = client_params(user, groups)?;
    if let Some(d) = expires_in {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + d);
    }
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kestrel\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kestrel\n  context:\n    cluster: kestrel\n    user: {user}\ncurrent-context: kestrel\n",
        b64(&ca_pem),
        b64(&cert.pem()),
        b64(&key.serialize_pem()),
    ))
}

/// A fresh client certificate for node `node`, for the key in a PEM
/// certificate signing request: how a node renews its credentials before
/// they lapse. Only the key comes from the request; the subject is always
/// `system:node:NODE` in `system:nodes`, whatever the request asks for, so
/// a node can renew itself and become no one else.
pub fn renew_node_certificate(pki: &Pki, node: &str, csr_pem: &str) -> anyhow::Result<String> {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| anyhow::anyhow!("not a signed PEM certificate request: {e}"))?;
    csr.params = client_params(&format!("system:node:{node}"), &["system:nodes"])?;
    let (ca, ca_key) = load_ca(pki)?;
    Ok(csr.signed_by(&ca, &ca_key)?.pem())
}

/// The API server's client certificate for node agents' APIs (logs):
/// made on first use, kept in the certificate directory.
pub fn kubelet_client(pki: &Pki) -> anyhow::Result<(String, String)> {
    let cert = pki.dir.join("apiserver-kubelet-client.crt");
    let key = pki.dir.join("apiserver-kubelet-client.key");
    if !cert.exists() || !key.exists() {
        let (ca, ca_key) = load_ca(pki)?;
        let k = KeyPair::generate()?;
        let c = client_params("kube-apiserver-kubelet-client", &["system:masters"])?
            .signed_by(&k, &ca, &ca_key)?;
        write_private(&key, &k.serialize_pem())?;
        std::fs::write(&cert, c.pem())?;
    }
    Ok((
        std::fs::read_to_string(cert)?,
        std::fs::read_to_string(key)?,
    ))
}

/// An admin kubeconfig for `server` using the admin client certificate.
pub fn admin_kubeconfig(pki: &Pki, server: &str) -> anyhow::Result<String> {
    let b64 = |p: PathBuf| -> anyhow::Result<String> {
        Ok(base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?))
    };
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kestrel\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kestrel\n  context:\n    cluster: kestrel\n    user: kubernetes-admin\ncurrent-context: kestrel\n",
        b64(pki.ca_cert())?,
        b64(pki.admin_cert())?,
        b64(pki.admin_key())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_in_ca_is_kept_and_completed() {
        let first = tempfile::tempdir().unwrap();
        ensure_pki(first.path(), &[]).unwrap();
        let ca = std::fs::read_to_string(first.path().join("ca.crt")).unwrap();
        // A second control plane gets only the CA, as an operator copies it.
        let second = tempfile::tempdir().unwrap();
        for f in ["ca.crt", "ca.key"] {
            std::fs::copy(first.path().join(f), second.path().join(f)).unwrap();
        }
        let pki = ensure_pki(second.path(), &["10.0.0.2".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(pki.ca_cert()).unwrap(), ca);
        assert!(pki.serving_cert().exists() && pki.admin_cert().exists());
        // Starting again changes nothing but the serving certificate.
        let admin = std::fs::read_to_string(pki.admin_cert()).unwrap();
        ensure_pki(second.path(), &[]).unwrap();
        assert_eq!(std::fs::read_to_string(pki.ca_cert()).unwrap(), ca);
        assert_eq!(std::fs::read_to_string(pki.admin_cert()).unwrap(), admin);
    }

    #[test]
    fn a_ca_is_made_once_and_issues_server_and_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_ca(dir.path()).unwrap());
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        assert!(
            !ensure_ca(dir.path()).unwrap(),
            "a second call made another CA"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            ca
        );

        let pki = Pki {
            dir: dir.path().to_path_buf(),
        };
        let (cert, _key) = issue(
            &pki,
            &CertRequest {
                common_name: "etcd-10-0-0-1",
                organizations: &[],
                sans: &["10.0.0.1".into(), "localhost".into()],
                server: true,
                client: true,
            },
        )
        .unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = rustls_pemfile::certs(&mut ca.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
        parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .expect("signed by the CA");
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let sans = parsed.subject_alternative_name().unwrap().unwrap().value;
        use x509_parser::extensions::GeneralName;
        assert!(sans
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [10, 0, 0, 1])));
        assert!(sans
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName("localhost"))));

        // A certificate for nothing, or from half a CA, is refused.
        let none = CertRequest {
            common_name: "x",
            organizations: &[],
            sans: &[],
            server: false,
            client: false,
        };
        assert!(issue(&pki, &none).is_err());
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = ensure_ca(dir.path()).unwrap_err().to_string();
        assert!(err.contains("only one of"), "{err}");
    }
}
