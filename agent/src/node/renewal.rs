//! When the node's client certificate is due for renewal, and how a renewed
//! one is written so a crash never leaves a half-written key behind.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// The validity period of a certificate, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

impl Validity {
    /// Reads the validity of the first certificate in a PEM file's text.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let (_, block) =
            x509_parser::pem::parse_x509_pem(pem).context("the certificate is not PEM")?;
        let cert = block.parse_x509().context("the certificate is not X.509")?;
        Ok(Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The moment to renew: two thirds into the certificate's life, as
    /// kubelet does (it picks 70-90%), so a year-long certificate is
    /// renewed with four months to spare and a control plane that is down
    /// for a while does not leave the node locked out.
    pub fn renew_at(&self) -> i64 {
        let life = self.not_after.saturating_sub(self.not_before).max(0);
        self.not_before.saturating_add(life / 3 * 2)
    }

    /// How long to wait from `now` before renewing; zero when already due
    /// (including a certificate that has expired or is backdated oddly).
    pub fn wait_from(&self, now: SystemTime) -> Duration {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Duration::from_secs(self.renew_at().saturating_sub(now).max(0) as u64)
    }
}

/// Writes `data` to `path` so that readers see the old file or the new one,
/// never a mix: a 0600 file beside it, synced, then renamed over it.
pub fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the certificate path has no directory")?;
    let name = path
        .file_name()
        .context("the certificate path has no file name")?;
    let tmp = dir.join(format!(".{}.new", name.to_string_lossy()));
    // A leftover from a crash would make create_new fail forever.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    // The rename itself is only durable once the directory is synced.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DAY: i64 = 86_400;

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    #[test]
    fn a_year_long_certificate_is_renewed_after_eight_months() {
        let v = Validity {
            not_before: 1_000 * DAY,
            not_after: 1_365 * DAY,
        };
        assert_eq!(v.renew_at(), 1_000 * DAY + 243 * DAY + DAY / 3);
        assert_eq!(
            v.wait_from(at(1_000 * DAY)).as_secs() as i64,
            v.renew_at() - 1_000 * DAY
        );
    }

    #[test]
    fn nothing_is_renewed_early() {
        let v = Validity {
            not_before: 0,
            not_after: 300,
        };
        assert_eq!(v.wait_from(at(199)), Duration::from_secs(1));
        assert_eq!(v.wait_from(at(200)), Duration::ZERO);
    }

    #[test]
    fn an_expired_or_inverted_certificate_is_due_now() {
        let expired = Validity {
            not_before: 0,
            not_after: 300,
        };
        assert_eq!(expired.wait_from(at(10_000)), Duration::ZERO);
        let inverted = Validity {
            not_before: 500,
            not_after: 100,
        };
        assert_eq!(inverted.renew_at(), 500);
        assert_eq!(inverted.wait_from(at(500)), Duration::ZERO);
    }

    #[test]
    fn validity_is_read_from_a_real_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["node".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("cert").pem();
        let v = Validity::from_pem(pem.as_bytes()).expect("validity");
        assert_eq!(v.not_after - v.not_before, 365 * DAY);
        assert!(Validity::from_pem(b"not a certificate").is_err());
    }

    #[test]
    fn a_renewed_key_replaces_the_old_file_readable_by_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        std::fs::write(&path, "old").expect("write");
        // A leftover from an interrupted write must not block the next one.
        std::fs::write(dir.path().join(".node.key.new"), "stale").expect("write");
        write_atomically(&path, b"new").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(".node.key.new").exists());
    }
}
