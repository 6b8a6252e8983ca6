use super::*;
use proptest::prelude::*;
use serde_json::json;

/// A minimal protobuf writer, just enough to build the bodies kubectl sends.
#[derive(Default, Clone)]
struct W(Vec<u8>);

impl W {
    fn varint(mut self, mut v: u64) -> Self {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn tag(self, n: u32, wire: u8) -> Self {
        self.varint(u64::from(n) << 3 | u64::from(wire))
    }
    fn int(self, n: u32, v: i64) -> Self {
        self.tag(n, 0).varint(v as u64)
    }
    fn bytes(self, n: u32, b: &[u8]) -> Self {
        let mut w = self.tag(n, 2).varint(b.len() as u64);
        w.0.extend_from_slice(b);
        w
    }
    fn str(self, n: u32, s: &str) -> Self {
        self.bytes(n, s.as_bytes())
    }
    fn msg(self, n: u32, m: W) -> Self {
        self.bytes(n, &m.0)
    }
    fn entry(self, n: u32, k: &str, v: &[u8]) -> Self {
        self.msg(n, W::default().str(1, k).bytes(2, v))
    }
}

fn body(api_version: &str, kind: &str, raw: W) -> Vec<u8> {
    let type_meta = W::default().str(1, api_version).str(2, kind);
    let unknown = W::default()
        .msg(1, type_meta)
        .msg(2, raw)
        .str(3, "")
        .str(4, "");
    [MAGIC, &unknown.0].concat()
}

/// ObjectMeta the way gogo-protobuf writes it: every non-pointer scalar is
/// present even when empty, and the zero creationTimestamp is an empty message.
fn object_meta(name: &str, labels: &[(&str, &str)]) -> W {
    let mut w = W::default();
    for (n, v) in [(1, name), (2, ""), (3, ""), (4, ""), (5, ""), (6, "")] {
        w = w.str(n, v);
    }
    w = w.int(7, 0).msg(8, W::default());
    for (k, v) in labels {
        w = w.entry(11, k, v.as_bytes());
    }
    w
}

#[test]
fn namespace() {
    let raw = W::default()
        .msg(1, object_meta("shop", &[]))
        .msg(2, W::default())
        .msg(3, W::default().str(1, ""));
    let got = decode(&body("v1", "Namespace", raw)).unwrap();
    let want = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop"}, "spec": {}, "status": {}
    });
    assert_eq!(got, want);
}

#[test]
fn config_map_with_binary_data() {
    let raw = W::default()
        .msg(1, object_meta("cfg", &[]))
        .entry(2, "a", b"b")
        .entry(3, "bin", &[0, 1, 2, 0xff])
        .entry(3, "empty", b"")
        .int(4, 0);
    let got = decode(&body("v1", "ConfigMap", raw)).unwrap();
    let want = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"a": "b"},
        "binaryData": {"bin": "AAEC/w==", "empty": ""},
        "immutable": false
    });
    assert_eq!(got, want);
}

#[test]
fn deployment_like_kubectl_create() {
    let app = [("app", "web")];
    let container = W::default()
        .str(1, "nginx")
        .str(2, "nginx")
        .str(5, "")
        .msg(8, W::default())
        .str(13, "")
        .str(14, "")
        .int(16, 0)
        .int(17, 0)
        .int(18, 0)
        .str(20, "");
    let pod_spec = W::default()
        .msg(2, container)
        .str(3, "")
        .str(6, "")
        .str(8, "")
        .str(9, "")
        .str(10, "")
        .int(11, 0)
        .int(12, 0)
        .int(13, 0)
        .str(16, "")
        .str(17, "")
        .str(19, "")
        .str(24, "");
    let spec = W::default()
        .int(1, 3)
        .msg(2, W::default().entry(1, "app", b"web"))
        .msg(
            3,
            W::default().msg(1, object_meta("", &app)).msg(2, pod_spec),
        )
        .msg(4, W::default().str(1, ""))
        .int(5, 0)
        .int(7, 0);
    let status = W::default()
        .int(1, 0)
        .int(2, 0)
        .int(3, 0)
        .int(4, 0)
        .int(5, 0)
        .int(7, 0);
    let raw = W::default()
        .msg(1, object_meta("web", &app))
        .msg(2, spec)
        .msg(3, status);
    let got = decode(&body("apps/v1", "Deployment", raw)).unwrap();
    let want = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
            },
            "strategy": {}
        },
        "status": {}
    });
    assert_eq!(got, want);
}

#[test]
fn service_ports_secret_and_scalars() {
    let port = W::default()
        .str(1, "http")
        .str(2, "TCP")
        .int(3, 80)
        .msg(4, W::default().int(1, 1).int(2, 0).str(3, "web"))
        .int(5, 0);
    let spec = W::default()
        .msg(1, port)
        .entry(2, "app", b"web")
        .str(4, "ClusterIP")
        .str(18, "10.0.0.1")
        .str(17, "SingleStack");
    let raw = W::default().msg(1, object_meta("web", &[])).msg(2, spec);
    let got = decode(&body("v1", "Service", raw)).unwrap();
    assert_eq!(
        got["spec"],
        json!({
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}],
            "selector": {"app": "web"}, "type": "ClusterIP",
            "clusterIPs": ["10.0.0.1"], "ipFamilyPolicy": "SingleStack"
        })
    );

    let meta = object_meta("s", &[]).msg(8, W::default().int(1, 1_704_164_645));
    let raw = W::default()
        .msg(1, meta)
        .entry(2, "k", b"hi")
        .str(3, "Opaque");
    let got = decode(&body("v1", "Secret", raw)).unwrap();
    assert_eq!(got["metadata"]["creationTimestamp"], "2024-01-02T03:04:05Z");
    assert_eq!(got["data"], json!({"k": "aGk="}));
    assert_eq!(got["type"], "Opaque");
}

#[test]
fn negative_int32_and_packed_int64() {
    let ctx = W::default().bytes(4, &W::default().varint(5).varint(7).0);
    let pod_spec = W::default().msg(14, ctx).int(25, -5);
    let raw = W::default().msg(2, pod_spec);
    let got = decode(&body("v1", "Pod", raw)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"securityContext": {"supplementalGroups": [5, 7]}, "priority": -5})
    );
}

#[test]
fn errors_are_readable() {
    let err = |b: &[u8]| decode(b).unwrap_err().to_string();
    assert_eq!(
        err(b"{}"),
        "not a Kubernetes protobuf body: missing k8s\\0 prefix"
    );
    assert_eq!(
        err(&body("apps/v1", "StatefulSet", W::default())),
        "unsupported kind apps/v1 StatefulSet in protobuf; send JSON or YAML"
    );
    assert_eq!(err(b"k8s\0\x0a\x80"), "truncated varint at byte 5");
    assert_eq!(
        err(b"k8s\0\x0a\x7f"),
        "truncated length-delimited field at byte 6: needs 127 bytes, only 0 left"
    );
    let raw = W::default().int(1, 1);
    assert_eq!(
        err(&body("v1", "Namespace", raw)),
        "field metadata at byte 23 has wire type 0, expected 2"
    );
    let raw = W::default().msg(1, W::default().bytes(1, &[0xff]));
    assert_eq!(
        err(&body("v1", "Namespace", raw)),
        "field name at byte 25 is not valid UTF-8"
    );
    assert_eq!(
        decode(&body("", "", W::default())),
        Err(DecodeError::MissingTypeMeta)
    );
}

#[test]
fn base64_matches_rfc4648_vectors() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ];
    for (input, want) in cases {
        assert_eq!(base64(input.as_bytes()), want);
    }
}

#[test]
fn time_bounds() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-719_528), (0, 1, 1));
    let meta = |s: i64| W::default().msg(1, W::default().msg(8, W::default().int(1, s)));
    let got = decode(&body("v1", "Namespace", meta(253_402_300_799))).unwrap();
    assert_eq!(got["metadata"]["creationTimestamp"], "9999-12-31T23:59:59Z");
    assert!(matches!(
        decode(&body("v1", "Namespace", meta(i64::MIN))),
        Err(DecodeError::TimeOutOfRange { .. })
    ));
}

#[test]
fn cronjob_like_kubectl_create() {
    let container = W::default()
        .str(1, "hello")
        .str(2, "busybox")
        .str(3, "echo");
    let pod_spec = W::default().msg(2, container).str(3, "OnFailure");
    let template = W::default().msg(1, object_meta("", &[])).msg(2, pod_spec);
    let job_spec = W::default().msg(6, template);
    let job_template = W::default().msg(1, object_meta("", &[])).msg(2, job_spec);
    let spec = W::default()
        .str(1, "*/5 * * * *")
        .str(3, "")
        .msg(5, job_template)
        .int(6, 0);
    let raw = W::default().msg(1, object_meta("hello", &[])).msg(2, spec);
    let got = decode(&body("batch/v1", "CronJob", raw)).unwrap();
    assert_eq!(got["spec"]["schedule"], "*/5 * * * *");
    assert!(got["spec"].get("concurrencyPolicy").is_none(), "{got}");
    assert_eq!(
        got["spec"]["successfulJobsHistoryLimit"], 0,
        "a pointer's zero is kept"
    );
    let c = &got["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox");
    assert_eq!(
        got["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );
}

const KINDS: [(&str, &str); 9] = [
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
];

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), prefixed in any::<bool>()) {
        let input = if prefixed { [MAGIC, &bytes].concat() } else { bytes };
        let _ = decode(&input);
    }

    #[test]
    fn random_raw_for_known_kinds_never_panics(
        kind in prop::sample::select(KINDS.to_vec()),
        raw in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = decode(&body(kind.0, kind.1, W(raw)));
    }

    #[test]
    fn mutated_deployment_never_panics(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let pod_spec = W::default().msg(2, W::default().str(1, "c").msg(6, W::default().int(3, 80)));
        let template = W::default().msg(1, object_meta("", &[("a", "b")])).msg(2, pod_spec);
        let spec = W::default().int(1, 3).msg(3, template).msg(4, W::default().msg(2, W::default().msg(1, W::default().int(1, 1).str(3, "25%"))));
        let mut input = body("apps/v1", "Deployment", W::default().msg(1, object_meta("web", &[])).msg(2, spec));
        for (at, byte) in edits {
            let i = at.index(input.len());
            input[i] = byte;
        }
        input.truncate(cut.index(input.len() + 1));
        let _ = decode(&input);
    }
}
