//! Importing image archives: OCI image layouts and `docker save` tarballs.
//!
//! A tar can only be read front to back, and the documents that say what
//! the files are (index.json, manifest.json) can come anywhere, so every
//! file is first staged under `tmp/` with its sha256; the blobs an image
//! uses are then moved (renamed) into the store, never copied twice.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::oci::{self, Descriptor, Index, Manifest};
use super::store::{ImageStore, Ingest};
use super::unpack::{decompressed, is_gzip, relative, HashingReader};
use super::{normalize, Error, IoContext, Result};

/// index.json, manifest.json and configs are small; anything bigger is not one.
const MAX_DOCUMENT: u64 = 16 << 20;

struct Staged {
    file: PathBuf,
    digest: String,
    size: u64,
}

/// The archive's files, staged on disk; removed when dropped.
struct Staging<'a> {
    archive: &'a Path,
    dir: PathBuf,
    files: HashMap<String, Staged>,
    /// Symlinks and hardlinks, resolved to archive paths (`docker save`
    /// links layers shared between images).
    links: HashMap<String, String>,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

// The store knows nothing of archive formats: importing is one more way of
// writing through an `Ingest`, like pulling.
impl ImageStore {
    /// Imports an OCI image layout archive or a `docker save` archive (either
    /// possibly gzipped) and returns the normalized references it named.
    pub fn import(&self, archive: &Path) -> Result<Vec<String>> {
        import(&self.ingest(), archive)
    }
}

fn import(ingest: &Ingest, archive: &Path) -> Result<Vec<String>> {
    let staging = stage(ingest, archive)?;
    let has_index = staging.lookup("index.json").is_some();
    let has_docker = staging.lookup("manifest.json").is_some();
    let mut refs = Vec::new();
    // Docker 25+ writes both; index.json carries the registry's manifest
    // digests, manifest.json only tags (the digest would be synthesized).
    if has_index {
        refs = import_oci(ingest, &staging)?;
    }
    if refs.is_empty() && has_docker {
        refs = import_docker(ingest, &staging)?;
    }
    if refs.is_empty() {
        if !has_index && !has_docker {
            return Err(Error::UnknownArchive {
                archive: archive.to_path_buf(),
            });
        }
        return Err(staging.bad(format!(
            "no image in it has a name (RepoTags in manifest.json or the {} annotation in \
             index.json); save it by name, e.g. `docker save busybox:1 -o busybox.tar`",
            oci::ANNOTATION_REF_NAME
        )));
    }
    let mut seen = std::collections::HashSet::new();
    refs.retain(|r| seen.insert(r.clone()));
    Ok(refs)
}

fn stage<'a>(ingest: &Ingest, archive: &'a Path) -> Result<Staging<'a>> {
    let dir = ingest.store().tmp_path("import");
    fs::create_dir(&dir).at(&dir)?;
    let mut staging = Staging {
        archive,
        dir,
        files: HashMap::new(),
        links: HashMap::new(),
    };
    let what = format!("image archive {}", archive.display());
    let mut tar = tar::Archive::new(decompressed(archive, &what)?);
    let bad = |e: io::Error| Error::BadArchive {
        archive: archive.to_path_buf(),
        reason: format!("not a readable tar: {e}"),
    };
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let rel = relative(&raw)
            .map_err(|reason| staging.bad(format!("entry {}: {reason}", raw.display())))?;
        let key = rel.to_string_lossy().into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let file = staging.dir.join(staging.files.len().to_string());
                let mut out = File::create(&file).at(&file)?;
                let mut reader = HashingReader::new(&mut entry);
                io::copy(&mut reader, &mut out).at(&file)?;
                let size = reader.bytes;
                let digest = reader.digest();
                staging.files.insert(key, Staged { file, digest, size });
            }
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                let Some(target) = entry.link_name().map_err(bad)? else {
                    continue;
                };
                // Symlinks are relative to their directory, hardlinks to the root.
                let base = match kind {
                    tar::EntryType::Symlink => rel.parent().unwrap_or(Path::new("")),
                    _ => Path::new(""),
                };
                if let Some(resolved) = resolve_link(base, &target) {
                    staging.links.insert(key, resolved);
                }
            }
            _ => {}
        }
    }
    Ok(staging)
}

/// Joins a link target onto `base` lexically, staying inside the archive.
fn resolve_link(base: &Path, target: &Path) -> Option<String> {
    let mut parts: Vec<_> = Vec::new();
    let start = if target.is_absolute() {
        Path::new("")
    } else {
        base
    };
    for c in start.components().chain(target.components()) {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(
        parts
            .iter()
            .collect::<PathBuf>()
            .to_string_lossy()
            .into_owned(),
    )
}

impl Staging<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::BadArchive {
            archive: self.archive.to_path_buf(),
            reason,
        }
    }

    fn lookup(&self, path: &str) -> Option<&Staged> {
        let mut path = relative(Path::new(path))
            .ok()?
            .to_string_lossy()
            .into_owned();
        // Bounded, so a symlink loop in the archive cannot hang the import.
        for _ in 0..16 {
            if let Some(s) = self.files.get(&path) {
                return Some(s);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    fn read_doc(&self, path: &str) -> Result<Vec<u8>> {
        let staged = self
            .lookup(path)
            .ok_or_else(|| self.bad(format!("it has no {path}")))?;
        if staged.size > MAX_DOCUMENT {
            return Err(self.bad(format!("{path} is {} bytes; too big for JSON", staged.size)));
        }
        fs::read(&staged.file).at(&staged.file)
    }

    fn blob(&self, digest: &str) -> Result<&Staged> {
        let hex = super::digest_hex(digest)?;
        self.lookup(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| self.bad(format!("blob {digest} is missing from blobs/sha256")))
    }

    /// Moves a staged file into the blob store unless it is already there,
    /// checking that its content is `digest`.
    fn store(&self, ingest: &Ingest, digest: &str, staged: &Staged) -> Result<()> {
        ingest.adopt(digest, &staged.digest, &staged.file)
    }
}

fn import_oci(ingest: &Ingest, staging: &Staging<'_>) -> Result<Vec<String>> {
    let index: Index = oci::parse("OCI index", "index.json", &staging.read_doc("index.json")?)?;
    let mut refs = Vec::new();
    for desc in &index.manifests {
        let name = desc
            .annotations
            .get(oci::ANNOTATION_CONTAINERD_NAME)
            .or_else(|| desc.annotations.get(oci::ANNOTATION_REF_NAME));
        let Some(name) = name else {
            continue;
        };
        let (manifest_desc, bytes) = platform_manifest(staging, desc)?;
        let m: Manifest = oci::parse("manifest", &manifest_desc.digest, &bytes)?;
        let config = m.config.as_ref().ok_or_else(|| {
            staging.bad(format!("manifest {} has no config", manifest_desc.digest))
        })?;
        for d in std::iter::once(config).chain(&m.layers) {
            if !ingest.has_blob(&d.digest) {
                staging.store(ingest, &d.digest, staging.blob(&d.digest)?)?;
            }
        }
        ingest.commit(name, &bytes)?;
        refs.push(normalize(name));
    }
    Ok(refs)
}

/// Follows an index entry down to the manifest for this machine's platform.
fn platform_manifest(staging: &Staging<'_>, top: &Descriptor) -> Result<(Descriptor, Vec<u8>)> {
    let mut desc = top.clone();
    for _ in 0..4 {
        let staged = staging.blob(&desc.digest)?;
        if staged.digest != desc.digest {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                actual: staged.digest.clone(),
            });
        }
        let bytes = staging.read_doc(&format!(
            "blobs/sha256/{}",
            super::digest_hex(&desc.digest)?
        ))?;
        let m: Manifest = oci::parse("manifest", &desc.digest, &bytes)?;
        let Some(list) = m.manifests else {
            return Ok((desc, bytes));
        };
        let arch = oci::host_architecture();
        let chosen = list
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .or_else(|| (list.len() == 1 && list[0].platform.is_none()).then(|| &list[0]));
        desc = chosen
            .ok_or_else(|| staging.bad(format!("index {} has no linux/{arch} image", desc.digest)))?
            .clone();
    }
    Err(staging.bad(format!("indexes nest too deeply under {}", top.digest)))
}

fn import_docker(ingest: &Ingest, staging: &Staging<'_>) -> Result<Vec<String>> {
    let entries: Vec<DockerManifestEntry> = oci::parse(
        "docker manifest",
        "manifest.json",
        &staging.read_doc("manifest.json")?,
    )?;
    let mut refs = Vec::new();
    for entry in entries {
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            continue;
        }
        let missing = |path: &str| {
            staging.bad(format!(
                "manifest.json names {path}, which is not in the archive"
            ))
        };
        let config = staging
            .lookup(&entry.config)
            .ok_or_else(|| missing(&entry.config))?;
        if config.size > MAX_DOCUMENT {
            return Err(staging.bad(format!("config {} is too big", entry.config)));
        }
        staging.store(ingest, &config.digest, config)?;
        let mut layers = Vec::new();
        for path in &entry.layers {
            let layer = staging.lookup(path).ok_or_else(|| missing(path))?;
            staging.store(ingest, &layer.digest, layer)?;
            let media_type = if is_gzip(&ingest.store().blob_path(&layer.digest)?)? {
                oci::MEDIA_LAYER_GZIP
            } else {
                oci::MEDIA_LAYER_TAR
            };
            layers.push(descriptor(media_type, layer));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_MANIFEST.into()),
            config: Some(descriptor(oci::MEDIA_CONFIG, config)),
            layers,
            manifests: None,
        };
        let bytes = oci::to_json(&manifest);
        for tag in tags {
            ingest.commit(&tag, &bytes)?;
            refs.push(normalize(&tag));
        }
    }
    Ok(refs)
}

fn descriptor(media_type: &str, staged: &Staged) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: staged.digest.clone(),
        size: staged.size,
        annotations: Default::default(),
        platform: None,
    }
}
