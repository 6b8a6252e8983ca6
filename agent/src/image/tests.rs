//! Store tests. They run as root: unpacking creates whiteout device nodes,
//! chowns files and sets trusted.* xattrs.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u64, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match *e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(mode);
                (p, &[])
            }
            E::File(p, mode, data) | E::Owned(p, mode, _, data) => {
                h.set_mode(mode);
                if let E::Owned(_, _, id, _) = *e {
                    h.set_uid(id);
                    h.set_gid(id);
                }
                (p, data)
            }
            E::Sym(p, target) | E::Hard(p, target) => {
                let kind = match e {
                    E::Sym(..) => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_link_name(target).unwrap();
                (p, &[])
            }
        };
        // Written raw: the builder itself refuses `..` and absolute names.
        let name = &mut h.as_gnu_mut().unwrap().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

/// A `docker save` archive of one image; `layers` are (tar, gzip it?).
fn docker_archive(path: &Path, tags: &[&str], layers: &[(Vec<u8>, bool)]) {
    let diff_ids: Vec<String> = layers.iter().map(|(t, _)| sha256_digest(t)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1"],
                   "WorkingDir": "/work", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![("cfg.json".into(), config)];
    let mut names = Vec::new();
    for (i, (t, gz)) in layers.iter().enumerate() {
        let name = format!("l{i}/layer.tar");
        files.push((name.clone(), if *gz { gzip(t) } else { t.clone() }));
        names.push(name);
    }
    let manifest = json!([{"Config": "cfg.json", "RepoTags": tags, "Layers": names}]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, 0o644, d)).collect();
    fs::write(path, tar_of(&entries)).unwrap();
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the stated length.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn busybox() -> Option<PathBuf> {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.exists(),
        "/bin/busybox is missing: run `cargo xtask setup` (it installs busybox-static)"
    );
    Some(p)
}

#[test]
fn normalizes_like_containerd() {
    assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
    assert_eq!(normalize("busybox:1"), "docker.io/library/busybox:1");
    assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
    assert_eq!(normalize("index.docker.io/me/app:2"), "docker.io/me/app:2");
    assert_eq!(
        normalize("registry.local:5000/x/y:1"),
        "registry.local:5000/x/y:1"
    );
    assert_eq!(
        normalize("registry.local:5000/x/y"),
        "registry.local:5000/x/y:latest"
    );
    assert_eq!(normalize("localhost/app"), "localhost/app:latest");
    let d = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        normalize(&format!("busybox@{d}")),
        format!("docker.io/library/busybox@{d}")
    );
    assert_eq!(normalize(&d), d);
    assert_eq!(
        repository("registry.local:5000/x/y:1"),
        "registry.local:5000/x/y"
    );
}

#[test]
fn busybox_image_builds_reproducibly_and_imports() {
    let Some(bb) = busybox() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.tar"), tmp.path().join("b.tar"));
    build::busybox_archive(&bb, &a, "busybox:1").unwrap();
    build::busybox_archive(&bb, &b, "busybox:1").unwrap();
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "build is not reproducible"
    );

    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    assert_eq!(store.import(&a).unwrap(), ["docker.io/library/busybox:1"]);
    let image = store
        .resolve("busybox:1")
        .unwrap()
        .expect("imported image resolves");
    assert_eq!(
        store.resolve("docker.io/library/busybox:1").unwrap(),
        Some(image.clone())
    );
    assert_eq!(store.resolve("busybox").unwrap(), None);
    assert_eq!(image.layers.len(), 1);
    let root = &image.layers[0];
    let meta = fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    for applet in ["sh", "ls", "sleep", "wget", "nc"] {
        let target = fs::read_link(root.join("bin").join(applet)).unwrap();
        assert_eq!(target, Path::new("busybox"), "{applet}");
    }
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
    for d in ["proc", "sys", "dev", "root", "var"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.entrypoint.is_empty());
    assert_eq!(
        image.config.env,
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    assert_eq!(image.config.working_dir, None);

    // By digest and by image ID too.
    let pinned = store
        .resolve(&format!("busybox@{}", image.digest))
        .unwrap()
        .unwrap();
    assert_eq!(pinned.layers, image.layers);
    assert_eq!(
        store.resolve(&image.id).unwrap().unwrap().digest,
        image.digest
    );

    // A second import neither unpacks again nor adds anything.
    let inode = fs::metadata(root.join("bin/busybox")).unwrap().ino();
    let blobs = count(&store.root().join("blobs/sha256"));
    assert_eq!(store.import(&b).unwrap(), ["docker.io/library/busybox:1"]);
    assert_eq!(fs::metadata(root.join("bin/busybox")).unwrap().ino(), inode);
    assert_eq!(count(&store.root().join("blobs/sha256")), blobs);
    assert_eq!(count(&store.root().join("layers")), 1);
    assert_eq!(count(&store.root().join("tmp")), 0);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].size > meta.len());
}

#[test]
fn docker_save_whiteouts_become_overlay_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        E::Dir("a/", 0o755),
        E::File("a/keep", 0o640, b"keep"),
        E::File("a/gone", 0o644, b"gone"),
        E::Dir("d/", 0o750),
        E::File("d/old", 0o644, b"old"),
        E::Owned("owned", 0o4755, 1000, b"x"),
        E::Hard("a/hard", "a/keep"),
        E::Sym("rel", "a/keep"),
    ]);
    let upper = tar_of(&[
        E::Dir("a/", 0o755),
        E::File("a/.wh.gone", 0o644, b""),
        E::Dir("d/", 0o750),
        E::File("d/.wh..wh..opq", 0o644, b""),
        E::File("d/new", 0o644, b"new"),
    ]);
    let archive = tmp.path().join("app.tar");
    docker_archive(
        &archive,
        &["registry.local:5000/x/app:1", "app"],
        &[(lower, true), (upper, true)],
    );
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let refs = store.import(&archive).unwrap();
    assert_eq!(
        refs,
        [
            "registry.local:5000/x/app:1",
            "docker.io/library/app:latest"
        ]
    );

    let image = store
        .resolve("registry.local:5000/x/app:1")
        .unwrap()
        .unwrap();
    assert_eq!(image.config.entrypoint, ["/bin/app"]);
    assert_eq!(image.config.cmd, ["--serve"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    let (l0, l1) = (&image.layers[0], &image.layers[1]);

    let hard = fs::metadata(l0.join("a/hard")).unwrap();
    assert_eq!(hard.ino(), fs::metadata(l0.join("a/keep")).unwrap().ino());
    assert_eq!(hard.mode() & 0o7777, 0o640);
    let owned = fs::metadata(l0.join("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1000, 0o4755)
    );
    assert_eq!(fs::read_link(l0.join("rel")).unwrap(), Path::new("a/keep"));

    let whiteout = fs::symlink_metadata(l1.join("a/gone")).unwrap();
    assert_eq!(whiteout.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(whiteout.rdev(), 0);
    assert!(!l1.join("a/.wh.gone").exists());
    assert_eq!(
        xattr(&l1.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l1.join("d/.wh..wh..opq").exists());
    assert_eq!(xattr(&l0.join("d"), "trusted.overlay.opaque"), None);

    overlay_view(tmp.path(), &image.layers);
}

/// Mounts the layers as overlayfs lowerdirs and checks the merged view.
fn overlay_view(tmp: &Path, layers: &[PathBuf]) {
    let merged = tmp.join("merged");
    fs::create_dir(&merged).unwrap();
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let opts = CString::new(format!("lowerdir={}", lower.join(":"))).unwrap();
    let target = CString::new(merged.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings; the mount is undone below.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    // Pods run on this mount: a machine that cannot make it cannot run
    // them, so the check fails rather than pass unchecked (the suite runs as root).
    assert_eq!(
        rc,
        0,
        "mounting the layers as overlayfs: {}",
        std::io::Error::last_os_error()
    );
    let seen = (
        merged.join("a/keep").exists(),
        merged.join("a/gone").exists(),
        merged.join("d/old").exists(),
        merged.join("d/new").exists(),
    );
    // SAFETY: unmounting the overlay mounted above.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(
        seen,
        (true, false, false, true),
        "(a/keep, a/gone, d/old, d/new)"
    );
}

#[test]
fn remove_collects_unreferenced_blobs_and_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tar_of(&[E::File("base", 0o644, b"shared")]);
    let one = tar_of(&[E::File("one", 0o644, b"1")]);
    let two = tar_of(&[E::File("two", 0o644, b"2")]);
    let (a, b) = (tmp.path().join("a.tar"), tmp.path().join("b.tar"));
    docker_archive(&a, &["one:1"], &[(base.clone(), true), (one, false)]);
    docker_archive(&b, &["two:1", "two:latest"], &[(base, true), (two, true)]);
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    store.import(&a).unwrap();
    store.import(&b).unwrap();
    let (blobs, layers) = (
        store.root().join("blobs/sha256"),
        store.root().join("layers"),
    );
    // base + one + two, and per image a config and a manifest.
    assert_eq!((count(&blobs), count(&layers)), (7, 3));
    let shared = store.resolve("two").unwrap().unwrap().layers[0].clone();

    assert!(store.remove("one:1").unwrap());
    assert!(!store.remove("one:1").unwrap());
    assert_eq!((count(&blobs), count(&layers)), (4, 2));
    assert!(shared.join("base").exists());
    assert!(store.remove("two:1").unwrap());
    assert_eq!(
        (count(&blobs), count(&layers)),
        (4, 2),
        "two:latest still uses them"
    );
    assert!(store.remove("docker.io/library/two:latest").unwrap());
    assert_eq!((count(&blobs), count(&layers)), (0, 0));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn path_traversal_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let escape = outside.display().to_string();
    let target = outside.join("target").display().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", tar_of(&[E::File("../evil", 0o644, b"x")])),
        (
            "deep dotdot",
            tar_of(&[E::File("a/../../../outside/evil", 0o644, b"x")]),
        ),
        ("absolute", tar_of(&[E::File("/evil", 0o644, b"x")])),
        (
            "through symlink",
            tar_of(&[E::Sym("esc", &escape), E::File("esc/evil", 0o644, b"x")]),
        ),
        (
            "whiteout through symlink",
            tar_of(&[E::Sym("esc", &escape), E::File("esc/.wh.evil", 0o644, b"")]),
        ),
        // Relative to the unpack directory, store/tmp/<n>-layer.
        (
            "hardlink up",
            tar_of(&[E::Hard("evil", "../../../outside/target")]),
        ),
        ("hardlink absolute", tar_of(&[E::Hard("evil", &target)])),
    ];
    fs::write(outside.join("target"), b"t").unwrap();
    for (what, layer) in cases {
        let archive = tmp.path().join("evil.tar");
        docker_archive(&archive, &["evil:1"], &[(layer, false)]);
        let err = store.import(&archive).expect_err(what);
        assert!(matches!(err, Error::LayerEntry { .. }), "{what}: {err}");
        assert!(!outside.join("evil").exists(), "{what} wrote outside");
        assert!(!tmp.path().join("evil").exists(), "{what} wrote outside");
        assert_eq!(
            fs::metadata(outside.join("target")).unwrap().nlink(),
            1,
            "{what}"
        );
        assert_eq!(count(&store.root().join("layers")), 0, "{what}");
        assert_eq!(
            count(&store.root().join("tmp")),
            0,
            "{what} left work behind"
        );
    }
    assert_eq!(store.resolve("evil:1").unwrap(), None);

    // The archive's own paths are checked too.
    let archive = tmp.path().join("outer.tar");
    fs::write(
        &archive,
        tar_of(&[E::File("../manifest.json", 0o644, b"[]")]),
    )
    .unwrap();
    assert!(matches!(
        store.import(&archive),
        Err(Error::BadArchive { .. })
    ));
}

#[test]
fn fifo_with_blank_device_numbers_unpacks() {
    let mut h = tar::Header::new_ustar();
    h.set_path("run/fifo").unwrap();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_mode(0o640);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    let ustar = h.as_ustar_mut().unwrap();
    ustar.dev_major.fill(0);
    ustar.dev_minor.fill(0);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[][..]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("blob");
    fs::write(&blob, b.into_inner().unwrap()).unwrap();
    let layer = tmp.path().join("layer");
    unpack::unpack_layer(&blob, &layer, "fifo").unwrap();
    let meta = fs::symlink_metadata(layer.join("run/fifo")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()),
        "{meta:?}"
    );
    assert_eq!(meta.mode() & 0o7777, 0o640);
}

#[test]
fn unknown_and_corrupt_archives_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let archive = tmp.path().join("foo.tar");
    fs::write(&archive, tar_of(&[E::File("hello", 0o644, b"hi")])).unwrap();
    let err = store.import(&archive).unwrap_err().to_string();
    assert!(
        err.contains("foo.tar has neither index.json nor manifest.json"),
        "{err}"
    );

    // A config whose diff_id does not match the layer.
    let layer = tar_of(&[E::File("f", 0o644, b"x")]);
    docker_archive(&archive, &["bad:1"], &[(layer, true)]);
    let mut t = tar::Archive::new(fs::File::open(&archive).unwrap());
    let mut files = Vec::new();
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if name == "cfg.json" {
            let s = String::from_utf8(data).unwrap();
            let real = s.split("sha256:").nth(1).unwrap()[..64].to_string();
            data = s.replace(&real, &"0".repeat(64)).into_bytes();
        }
        files.push((name, data));
    }
    let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, 0o644, d)).collect();
    fs::write(&archive, tar_of(&entries)).unwrap();
    let err = store.import(&archive).unwrap_err();
    assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    assert_eq!(count(&store.root().join("layers")), 0);
}

#[test]
fn store_pulled_checks_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let layer = gzip(&tar_of(&[E::File("hello", 0o644, b"hi")]));
    let diff_id = sha256_digest(&tar_of(&[E::File("hello", 0o644, b"hi")]));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": oci::MEDIA_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": oci::MEDIA_LAYER_GZIP, "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let err = store
        .store_pulled("hello", &manifest, &config, &[b"tampered"])
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    let image = store
        .store_pulled("hello", &manifest, &config, &[&layer])
        .unwrap();
    assert_eq!(image.reference, "docker.io/library/hello:latest");
    assert_eq!(image.digest, sha256_digest(&manifest));
    assert_eq!(fs::read(image.layers[0].join("hello")).unwrap(), b"hi");
    assert_eq!(store.resolve("hello").unwrap(), Some(image));
}

#[test]
fn concurrent_imports_of_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("c.tar");
    let layer = tar_of(&[E::Dir("d/", 0o755), E::File("d/f", 0o644, &[7u8; 100_000])]);
    docker_archive(&archive, &["c:1"], &[(layer, true)]);
    let dir = tmp.path().join("store");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (dir, archive) = (dir.clone(), archive.clone());
            std::thread::spawn(move || ImageStore::open(&dir).unwrap().import(&archive))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), ["docker.io/library/c:1"]);
    }
    let store = ImageStore::open(&dir).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(count(&store.root().join("layers")), 1);
    assert_eq!(count(&store.root().join("tmp")), 0);
}
