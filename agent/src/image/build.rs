//! Builds a one-layer busybox image as an OCI image layout archive, so a node
//! without registry access still has an image to run. The output is
//! byte-for-byte reproducible: fixed mtimes and owners, an uncompressed layer
//! (gzip output differs between zlib backends), and documents serialized
//! from structs in a fixed field order.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::Command;

use tar::{Builder, EntryType, Header};

use super::oci::{
    self, ConfigFile, Descriptor, Index, Manifest, Platform, RootFs, RunConfig, MEDIA_CONFIG,
    MEDIA_INDEX, MEDIA_LAYER_TAR, MEDIA_MANIFEST,
};
use super::{digest_hex, normalize, sha256_digest, Error, IoContext, Result};

/// Applets linked into /bin when the binary has them.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "sleep", "hostname", "env", "id", "true", "false", "wget", "nc",
    "ps", "mkdir", "rm", "date", "head", "tail", "touch", "grep", "sed", "vi", "top", "kill",
    "mount", "uname", "pwd", "printf", "test", "seq", "yes", "dd", "df", "free", "ip", "ifconfig",
    "ping", "nslookup", "httpd",
];

/// 2024-01-01T00:00:00Z: any fixed time keeps the layer digest stable.
const MTIME: u64 = 1_704_067_200;
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// Writes to `out` an OCI image layout archive named `reference` (stored
/// normalized) whose single layer holds `busybox`, which must be a static
/// binary such as Debian's `/bin/busybox` from busybox-static.
pub fn busybox_archive(busybox: &Path, out: &Path, reference: &str) -> Result<()> {
    let bad = |reason: String| Error::BadBusybox {
        path: busybox.to_path_buf(),
        reason,
    };
    let binary = fs::read(busybox).at(busybox)?;
    let architecture = static_elf_architecture(&binary).map_err(bad)?;
    let listed = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| bad(format!("cannot run `--list`: {e}")))?;
    if !listed.status.success() {
        return Err(bad(format!("`--list` failed: {}", listed.status)));
    }
    let available: HashSet<&str> = std::str::from_utf8(&listed.stdout)
        .map_err(|_| bad("`--list` printed non-UTF-8 output".into()))?
        .split_whitespace()
        .collect();
    let applets: Vec<&str> = APPLETS
        .iter()
        .copied()
        .filter(|a| available.contains(a))
        .collect();
    if !applets.contains(&"sh") {
        return Err(bad("it has no `sh` applet".into()));
    }

    let layer = layer_tar(&binary, &applets).at(out)?;
    let diff_id = sha256_digest(&layer);
    let config = oci::to_json(&ConfigFile {
        architecture: architecture.into(),
        os: "linux".into(),
        config: Some(RunConfig {
            env: Some(vec![PATH_ENV.into()]),
            cmd: Some(vec!["sh".into()]),
            ..RunConfig::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id.clone()],
        },
    });
    let manifest = oci::to_json(&Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: Some(descriptor(MEDIA_CONFIG, &config)),
        // Uncompressed, so the layer digest is the diff_id.
        layers: vec![descriptor(MEDIA_LAYER_TAR, &layer)],
        manifests: None,
    });
    let name = normalize(reference);
    let mut top = descriptor(MEDIA_MANIFEST, &manifest);
    top.annotations = BTreeMap::from([
        (oci::ANNOTATION_CONTAINERD_NAME.to_string(), name.clone()),
        (oci::ANNOTATION_REF_NAME.to_string(), name),
    ]);
    top.platform = Some(Platform {
        architecture: architecture.into(),
        os: "linux".into(),
        variant: None,
    });
    let index = oci::to_json(&Index {
        schema_version: 2,
        media_type: Some(MEDIA_INDEX.into()),
        manifests: vec![top],
    });

    // Written aside and renamed, so an interrupted build leaves no half archive.
    let partial = out.with_extension("partial");
    let result = (|| -> io::Result<()> {
        let mut tar = Builder::new(BufWriter::new(File::create(&partial)?));
        file(
            &mut tar,
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        file(&mut tar, "index.json", 0o644, &index)?;
        dir(&mut tar, "blobs/", 0o755)?;
        dir(&mut tar, "blobs/sha256/", 0o755)?;
        for blob in [&config, &layer, &manifest] {
            let path = format!("blobs/sha256/{}", hex_of(blob));
            file(&mut tar, &path, 0o644, blob)?;
        }
        tar.into_inner()?.into_inner()?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&partial);
        return Err(e).at(&partial);
    }
    fs::rename(&partial, out).at(out)
}

fn descriptor(media_type: &str, blob: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: sha256_digest(blob),
        size: blob.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

fn hex_of(blob: &[u8]) -> String {
    let digest = sha256_digest(blob);
    digest_hex(&digest).unwrap_or_default().to_string()
}

fn layer_tar(busybox: &[u8], applets: &[&str]) -> io::Result<Vec<u8>> {
    let mut tar = Builder::new(Vec::new());
    dir(&mut tar, "bin/", 0o755)?;
    file(&mut tar, "bin/busybox", 0o755, busybox)?;
    for applet in applets {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    dir(&mut tar, "dev/", 0o755)?;
    dir(&mut tar, "etc/", 0o755)?;
    file(&mut tar, "etc/group", 0o644, GROUP.as_bytes())?;
    file(&mut tar, "etc/passwd", 0o644, PASSWD.as_bytes())?;
    dir(&mut tar, "proc/", 0o555)?;
    dir(&mut tar, "root/", 0o700)?;
    dir(&mut tar, "sys/", 0o555)?;
    dir(&mut tar, "tmp/", 0o1777)?;
    dir(&mut tar, "var/", 0o755)?;
    tar.into_inner()
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn dir<W: Write>(tar: &mut Builder<W>, path: &str, mode: u32) -> io::Result<()> {
    tar.append_data(
        &mut header(EntryType::Directory, mode, 0),
        path,
        io::empty(),
    )
}

fn file<W: Write>(tar: &mut Builder<W>, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
    let mut h = header(EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)
}

/// The OCI architecture of a static 64-bit little-endian ELF executable. A
/// dynamically linked busybox would not start in an image with no libc.
fn static_elf_architecture(elf: &[u8]) -> Result<&'static str, String> {
    let u16_at = |off: usize| {
        elf.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        elf.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| {
        elf.get(off..off + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let truncated = || "truncated ELF header".to_string();
    let architecture = match u16_at(18).ok_or_else(truncated)? {
        62 => "amd64",
        183 => "arm64",
        other => return Err(format!("unsupported ELF machine {other}")),
    };
    let phoff = usize::try_from(u64_at(32).ok_or_else(truncated)?).map_err(|_| truncated())?;
    let phentsize = usize::from(u16_at(54).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(56).ok_or_else(truncated)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let p_type = phoff
            .checked_add(i * phentsize)
            .and_then(u32_at)
            .ok_or_else(truncated)?;
        if p_type == PT_INTERP {
            return Err(
                "it is dynamically linked; install busybox-static and use its /bin/busybox".into(),
            );
        }
    }
    Ok(architecture)
}
