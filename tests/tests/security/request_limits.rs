//! No client can make the server build or hold more than a request's worth:
//! a growing JSON patch, a forged continue token, absurd query numbers and
//! slow connections.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::process::wait_for;
use harness::secured::Secured;
use serde_json::{json, Value};

use crate::common::{pod, status_reason, CONFIGMAPS, PODS};

/// A JSON patch of a few hundred bytes that copies a value onto itself
/// again and again is refused with 413 before it builds a huge object, and
/// so is one that adds a value past the limit.
#[test]
fn a_json_patch_cannot_grow_an_object_past_the_request_limit() {
    let s = Secured::start(&[]);
    s.admin_create(
        CONFIGMAPS,
        json!({"metadata": {"name": "seed"}, "data": {"a": "x".repeat(4096)}}),
    );
    let mut ops = vec![json!({"op": "add", "path": "/data/b", "value": ""})];
    for i in 0..30 {
        ops.push(json!({"op": "copy", "from": "/data", "path": format!("/metadata/annotations")}));
        ops.push(json!({"op": "add", "path": format!("/data/c{i}"), "value": ""}));
        ops.push(
            json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/data/c{i}")}),
        );
    }
    let patch = Value::Array(ops).to_string();
    assert!(patch.len() < 8192);
    let started = Instant::now();
    let (code, out) = s.curl(
        &s.admin(),
        "PATCH",
        &format!("{CONFIGMAPS}/seed"),
        Some(("application/json-patch+json", &patch)),
    );
    assert_eq!(code, 413, "{out}");
    assert_eq!(status_reason(&out), "RequestEntityTooLarge", "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // A value too large for the limit on its own, through merge patch.
    let big = json!({"data": {"big": "y".repeat(3 * 1024 * 1024)}}).to_string();
    let (code, out) = s.curl(
        &s.admin(),
        "PATCH",
        &format!("{CONFIGMAPS}/seed"),
        Some(("application/merge-patch+json", &big)),
    );
    assert_eq!(code, 413, "{out}");
    // The object is as it was, and the server well.
    let (code, out) = s.curl(&s.admin(), "GET", &format!("{CONFIGMAPS}/seed"), None);
    assert_eq!(code, 200, "{out}");
    let cm: Value = serde_json::from_str(&out).unwrap();
    assert!(
        cm["data"].get("b").is_none() && cm["metadata"].get("annotations").is_none(),
        "{cm}"
    );
}

fn continue_token(start: &str) -> String {
    use std::io::Write as _;
    let raw = json!({"rv": 0, "start": start}).to_string();
    let mut child = Command::new("base64")
        .args(["-w", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A forged `continue` token naming a key of another namespace or another
/// resource cannot start a list there: 400, and nothing of it is shown.
#[test]
fn a_continue_token_cannot_start_a_list_outside_its_prefix() {
    let s = Secured::start(&[]);
    s.admin_create("/api/v1/namespaces", json!({"metadata": {"name": "a"}}));
    s.admin_create("/api/v1/namespaces", json!({"metadata": {"name": "b"}}));
    s.admin_create(
        "/api/v1/namespaces/a/configmaps",
        json!({"metadata": {"name": "hidden"}}),
    );
    s.admin_create(
        "/api/v1/namespaces/a/secrets",
        json!({"metadata": {"name": "key"}}),
    );
    for start in [
        "/registry/configmaps/a/",
        "/registry/configmaps/",
        "/registry/secrets/a/",
        "/",
    ] {
        let path = format!(
            "/api/v1/namespaces/b/configmaps?limit=5&continue={}",
            urlencode(&continue_token(start))
        );
        let (code, out) = s.curl(&s.admin(), "GET", &path, None);
        assert_eq!(code, 400, "start {start}: {out}");
        assert!(!out.contains("hidden") && !out.contains("\"key\""), "{out}");
    }
    // A real token still pages.
    s.admin_create(
        "/api/v1/namespaces/b/configmaps",
        json!({"metadata": {"name": "one"}}),
    );
    s.admin_create(
        "/api/v1/namespaces/b/configmaps",
        json!({"metadata": {"name": "two"}}),
    );
    let (code, out) = s.curl(
        &s.admin(),
        "GET",
        "/api/v1/namespaces/b/configmaps?limit=1",
        None,
    );
    assert_eq!(code, 200, "{out}");
    let token = serde_json::from_str::<Value>(&out).unwrap()["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out) = s.curl(
        &s.admin(),
        "GET",
        &format!(
            "/api/v1/namespaces/b/configmaps?limit=1&continue={}",
            urlencode(&token)
        ),
        None,
    );
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("\"two\""), "{out}");
}

/// Absurd `timeoutSeconds` and `limitBytes` values get a 400/422 or a
/// bounded watch; none takes the server down.
#[test]
fn absurd_query_numbers_cannot_break_the_server() {
    let s = Secured::start(&[]);
    s.admin_create(PODS, pod("web", "n1", json!({})));
    let admin = s.admin();
    for (path, want) in [
        (
            "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=99999999999999999999",
            400,
        ),
        (
            "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=abc",
            400,
        ),
        ("/api/v1/namespaces/default/pods/web/log?limitBytes=-1", 422),
        (
            "/api/v1/namespaces/default/pods/web/log?limitBytes=99999999999999999999",
            400,
        ),
        ("/api/v1/namespaces/default/pods/web/log?tailLines=-5", 422),
        ("/api/v1/namespaces/default/configmaps?limit=-1", 200),
    ] {
        let (code, out) = s.curl(&admin, "GET", path, None);
        assert_eq!(code, want, "{path}: {out}");
    }
    // The largest i64 and a negative number: the watch opens (and curl
    // gives up on it), the server stays up.
    for t in ["9223372036854775807", "-9223372036854775808"] {
        let out = Command::new("curl")
            .args(["-sS", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.pki().join("ca.crt"))
            .arg("--cert").arg(&admin.cert).arg("--key").arg(&admin.key)
            .arg(format!("https://127.0.0.1:{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds={t}", s.port))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "timeoutSeconds={t}"
        );
    }
    assert_eq!(
        s.curl(&admin, "GET", "/api/v1/namespaces/default", None).0,
        200
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Connections that never finish their handshake or their headers, or
/// sit idle, are closed after the header timeout; past the connection
/// limit new ones are closed at once; and once they are gone the server
/// answers again.
#[test]
fn slow_clients_cannot_hold_the_server() {
    let s = Secured::start(&["--request-header-timeout=2", "--max-connections=4"]);
    let addr = format!("127.0.0.1:{}", s.port);
    // A TLS client that sends half a request and stops.
    let mut slow = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr, "-CAfile"])
        .arg(s.pki().join("ca.crt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = slow.stdin.take().unwrap();
    stdin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let exited = wait_for(Duration::from_secs(15), || slow.try_wait().unwrap());
    assert!(
        exited.is_some(),
        "a client dribbling its headers kept its connection"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    drop(stdin);

    // Silent TCP connections fill the limit; the next is closed at once.
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 1];
    let closed_at_once = matches!(extra.read(&mut buf), Ok(0))
        || matches!(extra.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed_at_once, "a connection past the limit was kept");
    // The silent ones are closed by the timeout, and service resumes.
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = c.read(&mut buf);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
    let back = wait_for(Duration::from_secs(10), || {
        (s.curl(&s.admin(), "GET", "/healthz", None).0 == 200).then_some(())
    });
    assert!(back.is_some());
}
