//! The on-disk store: `blobs/sha256/<hex>`, `layers/<diff_id hex>/`,
//! `index.json` (an OCI index whose `ref.name` annotations are the image
//! references) and `tmp/` for work in progress, always renamed into place.
//!
//! One process owns a store directory. Inside it, every `ImageStore` opened
//! on the same directory shares one lock: index updates and garbage
//! collection hold it, and GC also waits until no `Ingest` is open, because
//! an ingest writes blobs that no index entry refers to yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use super::oci::{self, ConfigFile, Descriptor, Index, Manifest};
use super::unpack::{unpack_layer, HashingReader};
use super::{
    digest_hex, normalize, repository, sha256_digest, Error, Image, ImageSummary, IoContext, Result,
};

#[derive(Default)]
struct Shared {
    /// Number of open `Ingest`s.
    leases: Mutex<usize>,
    idle: Condvar,
}

fn shared_for(root: &Path) -> Arc<Shared> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Shared>>>> = OnceLock::new();
    let mut map = REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    map.entry(root.to_path_buf()).or_default().clone()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A handle on the image store directory; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ImageStore> {
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).at(&p)?;
            // Unpacked layers keep the images' setuid binaries: root's alone.
            if sub != "blobs/sha256" {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).at(&p)?;
            }
        }
        let root = dir.canonicalize().at(dir)?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&root, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let store = ImageStore {
            shared: shared_for(&root),
            root,
        };
        store.clean_stale_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts adding content; blobs written through the returned `Ingest`
    /// are safe from garbage collection until it is dropped. `remove` waits
    /// for every open `Ingest`, so do not call it while holding one.
    pub fn ingest(&self) -> Ingest {
        *self.leases() += 1;
        Ingest {
            store: self.clone(),
        }
    }

    /// Stores an image fetched from a registry in one call: `manifest` is the
    /// platform manifest as served, `config` and `layers` (in manifest order,
    /// as served: compressed or not) are checked against its digests.
    pub fn store_pulled(
        &self,
        reference: &str,
        manifest: &[u8],
        config: &[u8],
        layers: &[&[u8]],
    ) -> Result<Image> {
        let ingest = self.ingest();
        let digest = sha256_digest(manifest);
        let m: Manifest = oci::parse("manifest", &digest, manifest)?;
        let config_desc = m.config.as_ref().ok_or_else(|| Error::BadDocument {
            what: "manifest",
            digest: digest.clone(),
            reason: "it has no config (is it an index? pass the platform manifest)".into(),
        })?;
        if m.layers.len() != layers.len() {
            return Err(Error::BadDocument {
                what: "manifest",
                digest,
                reason: format!(
                    "it lists {} layers but {} were given",
                    m.layers.len(),
                    layers.len()
                ),
            });
        }
        ingest.put_blob(&config_desc.digest, config)?;
        for (desc, bytes) in m.layers.iter().zip(layers) {
            ingest.put_blob(&desc.digest, *bytes)?;
        }
        ingest.commit(reference, manifest)
    }

    /// Finds an image by reference (normalized first). A digest reference
    /// also matches an image of the same repository stored under a tag, and a
    /// bare `sha256:` matches a manifest digest or image ID.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>> {
        let wanted = normalize(reference);
        let _guard = self.leases();
        let index = self.read_index()?;
        if let Some(desc) = index
            .manifests
            .iter()
            .find(|d| ref_name(d) == Some(&wanted))
        {
            return self.load(wanted, desc).map(Some);
        }
        if wanted.starts_with("sha256:") {
            for desc in &index.manifests {
                let image = self.load(wanted.clone(), desc)?;
                if image.digest == wanted || image.id == wanted {
                    return Ok(Some(image));
                }
            }
        } else if let Some((_, digest)) = wanted.split_once('@') {
            let repo = repository(&wanted);
            let found = index
                .manifests
                .iter()
                .find(|d| d.digest == digest && ref_name(d).is_some_and(|r| repository(r) == repo));
            if let Some(desc) = found {
                return self.load(wanted.clone(), desc).map(Some);
            }
        }
        Ok(None)
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let _guard = self.leases();
        let index = self.read_index()?;
        let mut out = Vec::new();
        for desc in &index.manifests {
            let Some(reference) = ref_name(desc) else {
                continue;
            };
            let m = self.read_manifest(&desc.digest)?;
            let size = desc.size
                + m.config.as_ref().map_or(0, |c| c.size)
                + m.layers.iter().map(|l| l.size).sum::<u64>();
            out.push(ImageSummary {
                reference: reference.clone(),
                digest: desc.digest.clone(),
                size,
            });
        }
        Ok(out)
    }

    /// Removes a reference and deletes blobs and layer directories no other
    /// image uses. Returns whether the reference existed. The caller must not
    /// remove an image whose layers a running container still has mounted.
    pub fn remove(&self, reference: &str) -> Result<bool> {
        let wanted = normalize(reference);
        let mut leases = self.leases();
        while *leases > 0 {
            leases = self
                .shared
                .idle
                .wait(leases)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| ref_name(d) != Some(&wanted));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        if let Err(e) = self.collect_garbage(&index) {
            // The reference is gone either way; leftovers go at the next removal.
            tracing::warn!(error = %e, "image store garbage collection failed");
        }
        drop(leases);
        Ok(true)
    }

    fn collect_garbage(&self, index: &Index) -> Result<()> {
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        for desc in &index.manifests {
            blobs.insert(digest_hex(&desc.digest)?.to_string());
            let m = self.read_manifest(&desc.digest)?;
            if let Some(c) = &m.config {
                blobs.insert(digest_hex(&c.digest)?.to_string());
                for diff in self.read_config(&c.digest)?.rootfs.diff_ids {
                    layers.insert(digest_hex(&diff)?.to_string());
                }
            }
            for l in &m.layers {
                blobs.insert(digest_hex(&l.digest)?.to_string());
            }
        }
        for (dir, live) in [
            (self.root.join("blobs/sha256"), &blobs),
            (self.root.join("layers"), &layers),
        ] {
            for entry in fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                if live.contains(entry.file_name().to_string_lossy().as_ref()) {
                    continue;
                }
                let path = entry.path();
                let removed = if entry.file_type().at(&path)?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.at(&path)?;
            }
        }
        Ok(())
    }

    fn load(&self, reference: String, desc: &Descriptor) -> Result<Image> {
        let m = self.read_manifest(&desc.digest)?;
        let config_desc = m.config.ok_or_else(|| Error::BadDocument {
            what: "manifest",
            digest: desc.digest.clone(),
            reason: "it has no config".into(),
        })?;
        let config = self.read_config(&config_desc.digest)?;
        let layers = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Ok(self.root.join("layers").join(digest_hex(d)?)))
            .collect::<Result<_>>()?;
        Ok(Image {
            reference,
            digest: desc.digest.clone(),
            id: config_desc.digest,
            layers,
            config: config.image_config(),
        })
    }

    fn leases(&self) -> MutexGuard<'_, usize> {
        self.shared
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn tmp_path(&self, kind: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{kind}", std::process::id()))
    }

    /// Removes work left in `tmp/` by processes that died mid-import.
    fn clean_stale_tmp(&self) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or_default();
            let ours = pid == std::process::id().to_string();
            if ours || Path::new("/proc").join(pid).exists() {
                continue;
            }
            let path = entry.path();
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::MissingBlob(digest.to_string()))
            }
            other => other.at(&path),
        }
    }

    fn read_manifest(&self, digest: &str) -> Result<Manifest> {
        oci::parse("manifest", digest, &self.read_blob(digest)?)
    }

    fn read_config(&self, digest: &str) -> Result<ConfigFile> {
        oci::parse("image config", digest, &self.read_blob(digest)?)
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => oci::parse("image store index", &path.display().to_string(), &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(oci::MEDIA_INDEX.into()),
                manifests: Vec::new(),
            }),
            Err(e) => Err(e).at(&path),
        }
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        write_atomic(
            &self.root,
            &self.root.join("index.json"),
            &oci::to_json(index),
        )
    }

    /// Unpacks a layer blob into `layers/<diff_id>` unless that is already there.
    fn ensure_layer(&self, blob_digest: &str, diff_id: &str) -> Result<PathBuf> {
        let dir = self.root.join("layers").join(digest_hex(diff_id)?);
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.blob_path(blob_digest)?;
        if !blob.exists() {
            return Err(Error::MissingBlob(blob_digest.to_string()));
        }
        let tmp = self.tmp_path("layer");
        let actual = match unpack_layer(&blob, &tmp, blob_digest) {
            Ok(actual) => actual,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        if actual != diff_id {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::DiffIdMismatch {
                layer: blob_digest.to_string(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            // Another import unpacked the same layer meanwhile.
            if !dir.is_dir() {
                return Err(e).at(&dir);
            }
        }
        Ok(dir)
    }
}

fn ref_name(desc: &Descriptor) -> Option<&String> {
    desc.annotations.get(oci::ANNOTATION_REF_NAME)
}

fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = root.join("tmp").join(format!(
        "{}-{}-write",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).at(&tmp)?;
    fs::rename(&tmp, path).at(path)
}

/// Content being added to the store. Holds off garbage collection while it
/// lives, so blobs stored through it survive until `commit` names them.
pub struct Ingest {
    store: ImageStore,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let mut leases = self.store.leases();
        *leases -= 1;
        if *leases == 0 {
            self.store.shared.idle.notify_all();
        }
    }
}

impl Ingest {
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.store.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Streams a blob into the store, checking it against `digest`; returns
    /// its size. A blob already present is not read again.
    pub fn put_blob(&self, digest: &str, data: impl Read) -> Result<u64> {
        let path = self.store.blob_path(digest)?;
        if let Ok(m) = fs::metadata(&path) {
            return Ok(m.len());
        }
        let tmp = self.store.tmp_path("blob");
        let result = (|| {
            let mut f = File::create(&tmp).at(&tmp)?;
            let mut reader = HashingReader::new(data);
            io::copy(&mut reader, &mut f).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            let size = reader.bytes;
            self.adopt(digest, &reader.digest(), &tmp)?;
            Ok(size)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Moves an already hashed file into the blob store.
    pub(super) fn adopt(&self, digest: &str, actual: &str, file: &Path) -> Result<()> {
        if actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let path = self.store.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        fs::rename(file, &path).at(&path)
    }

    /// Names an image: stores `manifest` (a platform manifest whose config
    /// and layer blobs are already stored), unpacks its layers once, and
    /// points `reference` at it.
    pub fn commit(&self, reference: &str, manifest: &[u8]) -> Result<Image> {
        let reference = normalize(reference);
        let digest = sha256_digest(manifest);
        let bad = |reason: String| Error::BadDocument {
            what: "manifest",
            digest: digest.clone(),
            reason,
        };
        if let Some((_, pinned)) = reference.split_once('@') {
            if pinned != digest {
                return Err(bad(format!("{reference} pins a different digest")));
            }
        }
        let m: Manifest = oci::parse("manifest", &digest, manifest)?;
        if m.manifests.is_some() {
            return Err(bad("it is an index; commit one platform's manifest".into()));
        }
        let config_desc = m
            .config
            .as_ref()
            .ok_or_else(|| bad("it has no config".into()))?;
        let config = self.store.read_config(&config_desc.digest)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != m.layers.len() {
            return Err(bad(format!(
                "it has {} layers but its config lists {} diff_ids",
                m.layers.len(),
                diff_ids.len()
            )));
        }
        for (layer, diff_id) in m.layers.iter().zip(diff_ids) {
            self.store.ensure_layer(&layer.digest, diff_id)?;
        }
        self.put_blob(&digest, manifest)?;

        let desc = Descriptor {
            media_type: m
                .media_type
                .clone()
                .unwrap_or_else(|| oci::MEDIA_MANIFEST.into()),
            digest,
            size: manifest.len() as u64,
            annotations: BTreeMap::from([(
                oci::ANNOTATION_REF_NAME.to_string(),
                reference.clone(),
            )]),
            platform: None,
        };
        let _guard = self.store.leases();
        let mut index = self.store.read_index()?;
        index.manifests.retain(|d| ref_name(d) != Some(&reference));
        index.manifests.push(desc.clone());
        self.store.write_index(&index)?;
        self.store.load(reference, &desc)
    }
}
