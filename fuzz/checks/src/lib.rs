//! What each fuzz target asserts about one input. The libFuzzer targets in
//! `fuzz/fuzz_targets` call these on nightly; `tests/corpus.rs` replays
//! every file of `fuzz/corpus/<target>` through them on stable, so a crash
//! once found stays fixed without libFuzzer in the build.
//!
//! A check returns normally when the code under test behaved (rejecting bad
//! input is behaving) and panics when a property is broken.

#[cfg(feature = "agent")]
use kestrel_agent::dns::wire;
#[cfg(feature = "apiserver")]
use kestrel_control_plane::apiserver::{request, validation};
#[cfg(feature = "apimachinery")]
use serde_json::Value;

/// A fuzz target: its name (also its corpus directory) and its check.
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    #[cfg(feature = "agent")]
    Target {
        name: "dns",
        check: check_dns,
    },
    #[cfg(feature = "cni")]
    Target {
        name: "cni",
        check: check_cni,
    },
    #[cfg(feature = "apimachinery")]
    Target {
        name: "patch",
        check: check_patch,
    },
    #[cfg(feature = "apimachinery")]
    Target {
        name: "protobuf",
        check: check_protobuf,
    },
    #[cfg(feature = "apimachinery")]
    Target {
        name: "selectors",
        check: check_selectors,
    },
    #[cfg(feature = "agent")]
    Target {
        name: "unpack",
        check: check_unpack,
    },
    #[cfg(feature = "agent")]
    Target {
        name: "spdy",
        check: check_spdy,
    },
    #[cfg(feature = "apiserver")]
    Target {
        name: "api_request",
        check: check_api_request,
    },
];

/// A DNS message from a pod: whatever the query parser accepts must give
/// a response the response parser reads back with the same id and rcode.
#[cfg(feature = "agent")]
pub fn check_dns(data: &[u8]) {
    let _ = wire::parse_response(data);
    if let Some(err) = wire::error_for(data, wire::RCODE_FORMERR) {
        let (rcode, _, records) = wire::parse_response(&err).expect("error reply parses");
        assert_eq!(rcode, wire::RCODE_FORMERR);
        assert!(records.is_empty());
    }
    let Ok(q) = wire::parse_query(data) else {
        return;
    };
    let out = wire::response(&q, wire::RCODE_NXDOMAIN, true, &[], &[], wire::UDP_LIMIT);
    assert_eq!(out[..2], q.id.to_be_bytes());
    let (rcode, truncated, records) = wire::parse_response(&out).expect("own response parses");
    assert_eq!(rcode, wire::RCODE_NXDOMAIN);
    assert!(!truncated);
    assert!(records.is_empty());
}

/// The network configuration on stdin, and the same bytes as CNI_ARGS.
#[cfg(feature = "cni")]
pub fn check_cni(data: &[u8]) {
    if let Ok(config) = kestrel_cni::config::parse_config(data) {
        assert!(kestrel_cni::config::SUPPORTED.contains(&config.version.as_str()));
        assert!(config.conf.subnet.prefix_len() <= 32);
    }
    if let Ok(args) = std::str::from_utf8(data) {
        let _ = kestrel_cni::config::check_cni_args(args);
    }
}

/// Splits `KIND\nTARGET\nPATCH`: the corpus stays readable and a mutation
/// of one part leaves the others intact.
/// The last part stays bytes: protobuf bodies are not UTF-8.
#[cfg(any(feature = "apimachinery", feature = "apiserver"))]
fn three_parts(data: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let first = std::str::from_utf8(parts.next()?).ok()?;
    let second = std::str::from_utf8(parts.next()?).ok()?;
    Some((first.trim(), second.trim(), parts.next()?))
}

/// `KIND\nTARGET\nPATCH` with KIND json, merge, strategic or apply.
/// The result must serialize to JSON that reads back as the same value, and
/// a merge patch applied twice must change nothing the second time
/// (RFC 7386 patches are idempotent).
#[cfg(feature = "apimachinery")]
pub fn check_patch(data: &[u8]) {
    use apimachinery::patch;
    let Some((kind, target, patch_text)) = three_parts(data) else {
        return;
    };
    let (Ok(target), Ok(p)) = (
        serde_json::from_str::<Value>(target),
        serde_json::from_slice::<Value>(patch_text),
    ) else {
        return;
    };
    let result = match kind {
        "json" => patch::json_patch(&target, &p),
        "merge" => patch::merge_patch(&target, &p),
        "strategic" => patch::strategic_merge_patch(&target, &p),
        "apply" => patch::apply_merge(&target, &p),
        _ => return,
    };
    let Ok(out) = result else {
        return;
    };
    assert_json_round_trips(&out);
    if kind == "merge" {
        let again =
            patch::merge_patch(&out, &p).expect("a merge patch that applied once applies again");
        assert_eq!(again, out, "merge patch is not idempotent");
    }
}

#[cfg(feature = "apimachinery")]
fn assert_json_round_trips(v: &Value) {
    let text = serde_json::to_string(v).expect("a JSON value serializes");
    let back: Value = serde_json::from_str(&text).expect("serialized JSON parses");
    assert_eq!(&back, v, "JSON does not read back as written");
}

/// A `k8s\0` protobuf body as kubectl sends it: decoded objects are JSON
/// objects that name their kind.
#[cfg(feature = "apimachinery")]
pub fn check_protobuf(data: &[u8]) {
    let Ok(obj) = apimachinery::protobuf::decode(data) else {
        return;
    };
    assert!(obj["apiVersion"].is_string(), "no apiVersion in {obj}");
    assert!(obj["kind"].is_string(), "no kind in {obj}");
    assert_json_round_trips(&obj);
}

/// Label and field selectors as they come in `?labelSelector=` and
/// `?fieldSelector=`: what parses prints as a selector that parses to the
/// same thing.
#[cfg(feature = "apimachinery")]
pub fn check_selectors(data: &[u8]) {
    use apimachinery::selectors::{FieldSelector, LabelSelector};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = LabelSelector::parse(text) {
        let shown = sel.to_string();
        let again = LabelSelector::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} printed as {shown:?}, which fails: {e}"));
        assert_eq!(again, sel, "{text:?} printed as {shown:?}");
        assert_eq!(again.to_string(), shown);
        let labels = [("app".to_string(), "web".to_string())].into();
        let _ = sel.matches_labels(&labels);
    }
    if let Ok(sel) = FieldSelector::parse(text) {
        let shown = sel.to_string();
        let again = FieldSelector::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} printed as {shown:?}, which fails: {e}"));
        assert_eq!(again, sel, "{text:?} printed as {shown:?}");
        let _ = sel.matches(&serde_json::json!({"metadata": {"name": "a"}}));
    }
}

/// A layer tarball: unpacked into `root/layer`, nothing may appear in
/// `root` besides the blob and the layer, and the empty `root/outside`
/// next to it (the nearest target for `../` tricks) must stay empty.
#[cfg(feature = "agent")]
pub fn check_unpack(data: &[u8]) {
    use std::fs;
    let root = tempfile::Builder::new()
        .prefix("kestrel-fuzz-unpack")
        .tempdir()
        .expect("temporary directory");
    let root = root.path();
    let blob = root.join("blob");
    fs::write(&blob, data).expect("writing the blob");
    fs::create_dir(root.join("outside")).expect("creating outside");
    let _ = kestrel_agent::image::unpack_layer(&blob, &root.join("layer"), "fuzz");
    let mut names: Vec<String> = fs::read_dir(root)
        .expect("reading the root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.retain(|n| n != "layer");
    assert_eq!(names, ["blob", "outside"], "the layer wrote next to itself");
    let outside = fs::read_dir(root.join("outside"))
        .expect("reading outside")
        .count();
    assert_eq!(outside, 0, "the layer wrote outside its directory");
    assert_no_link_leaves(root);
}

/// Hard links are the one way a tar entry can point at a file outside
/// without leaving a trace in the directory: the blob's link count shows it.
#[cfg(feature = "agent")]
fn assert_no_link_leaves(root: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.join("blob")).expect("blob metadata");
    assert_eq!(meta.nlink(), 1, "the layer hard-linked a file outside it");
}

/// `PATH?QUERY\nCONTENT-TYPE\nBODY`: the decoding the API server does
/// before storage. An object the schema check accepts is accepted again
/// unchanged and without warnings, even under strict field validation.
#[cfg(feature = "apiserver")]
pub fn check_api_request(data: &[u8]) {
    let Some((target, content_type, body)) = three_parts(data) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(Ok(t)) = request::parse_path(path) else {
        return;
    };
    let query = request::Query::parse(Some(query));
    let _ = query.dry_run();
    let Ok(mode) = validation::FieldValidation::parse(query.get("fieldValidation")) else {
        return;
    };
    let Ok(value) = request::decode_body(content_type, body) else {
        return;
    };
    let Ok((obj, _warnings)) = validation::decode(t.res, &value, mode) else {
        return;
    };
    let _ = validation::validate(t.res, &obj);
    let (again, warnings) =
        match validation::decode(t.res, &obj, validation::FieldValidation::Strict) {
            Ok(r) => r,
            Err(e) => panic!("decoded {obj} is rejected when decoded again: {e:?}"),
        };
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(again, obj, "decoding is not a fixed point");
}

/// Bytes from a port-forward client: the SPDY decoder returns frames or
/// an error, never panics, and every frame it returns encodes and decodes
/// back to itself (header blocks through fresh zlib streams).
#[cfg(feature = "agent")]
pub fn check_spdy(data: &[u8]) {
    use kestrel_agent::portforward::spdy::{Decoder, Encoder};
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new().expect("an encoder");
    let mut again = Decoder::new();
    let mut at = 0;
    while let Ok(Some((frame, n))) = decoder.decode(&data[at..]) {
        assert!(n >= 8 && at + n <= data.len());
        at += n;
        let mut wire = Vec::new();
        encoder
            .encode(&frame, &mut wire)
            .expect("a decoded frame encodes");
        let (back, m) = again
            .decode(&wire)
            .expect("an encoded frame decodes")
            .expect("whole");
        assert_eq!(m, wire.len());
        assert_eq!(back, frame);
    }
}
