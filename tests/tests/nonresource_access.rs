//! Paths that name no resource are authorized by RBAC's nonResourceURLs,
//! as kube-apiserver does: `/metrics` only for admins, `system:monitoring`
//! and subjects bound to a role that grants it; discovery and OpenAPI for
//! every authenticated user; health and version for everyone. Each crossing
//! is tried with curl and kubectl against the real API server over TLS.

use std::process::Command;
use std::time::Duration;

use harness::process::wait_for;
use harness::secured::{Identity, Secured};
use serde_json::{json, Value};

fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `GET path` with a bearer token: (status code, body).
fn with_token(s: &Secured, token: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.pki().join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://127.0.0.1:{}{path}", s.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A token of ServiceAccount `default/name`, which the admin creates.
fn service_account_token(s: &Secured, name: &str) -> String {
    s.admin_create(
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    );
    let (code, body) = s.curl(
        &s.admin(),
        "POST",
        &format!("/api/v1/namespaces/default/serviceaccounts/{name}/token"),
        Some((
            "application/json",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 3600}})
            .to_string(),
        )),
    );
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}

fn expect(s: &Secured, who: (&str, &Identity), path: &str, want: u16) {
    let (code, body) = s.curl(who.1, "GET", path, None);
    assert_eq!(code, want, "{} GET {path}: {body}", who.0);
    if want == 403 {
        assert_eq!(reason(&body), "Forbidden", "{} GET {path}: {body}", who.0);
        assert!(body.contains(path), "the refusal names the path: {body}");
    }
}

/// An ordinary user, a node and a ServiceAccount cannot scrape `/metrics`;
/// an admin, a member of `system:monitoring`, and a ServiceAccount once it
/// is bound to a ClusterRole granting `get` on `/metrics` can.
#[test]
fn metrics_are_read_only_by_admins_monitoring_and_those_granted_them() {
    let s = Secured::start(&[]);
    let admin = s.admin();
    let (code, body) = s.curl(&admin, "GET", "/metrics", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("apiserver_request_total"), "{body}");

    let user = s.client("jane", &["developers"]);
    let node = s.node("n1");
    let monitor = s.client("prometheus", &["system:monitoring"]);
    expect(&s, ("an ordinary user", &user), "/metrics", 403);
    expect(&s, ("a node", &node), "/metrics", 403);
    expect(&s, ("system:monitoring", &monitor), "/metrics", 200);
    // Nothing of the ordinary kind widens with the path's spelling.
    expect(&s, ("an ordinary user", &user), "/metrics/", 403);
    expect(&s, ("an ordinary user", &user), "/debug/pprof/", 403);
    expect(&s, ("an ordinary user", &user), "/logs/", 403);

    let token = service_account_token(&s, "prom");
    let (code, body) = with_token(&s, &token, "/metrics");
    assert_eq!(code, 403, "a ServiceAccount without a binding: {body}");
    let k = s.admin_kubectl();
    let can_i = |who: &str| {
        k.output(&["auth", "can-i", "get", "/metrics", &format!("--as={who}")])
            .unwrap()
    };
    let sa = "system:serviceaccount:default:prom";
    assert!(!can_i(sa).status.success(), "can-i agrees with the 403");
    k.run(&[
        "create",
        "clusterrole",
        "metrics-reader",
        "--verb=get",
        "--non-resource-url=/metrics",
    ])
    .unwrap();
    k.run(&[
        "create",
        "clusterrolebinding",
        "prom-metrics",
        "--clusterrole=metrics-reader",
        "--serviceaccount=default:prom",
    ])
    .unwrap();
    let granted = wait_for(Duration::from_secs(10), || {
        let (code, body) = with_token(&s, &token, "/metrics");
        (code == 200).then_some(body)
    })
    .expect("the bound ServiceAccount reads /metrics");
    assert!(granted.contains("apiserver_request_total"), "{granted}");
    assert!(can_i(sa).status.success(), "can-i agrees with the 200");
    // The binding grants that path alone, and to that account alone.
    let (code, body) = with_token(&s, &token, "/debug/pprof/");
    assert_eq!(code, 403, "{body}");
    assert!(!can_i("system:serviceaccount:default:other")
        .status
        .success());
    expect(&s, ("an ordinary user", &user), "/metrics", 403);
}

/// Discovery, OpenAPI, health and version stay readable by every
/// authenticated user, health and version also without credentials;
/// without credentials nothing else is served.
#[test]
fn discovery_is_for_the_authenticated_and_health_for_everyone() {
    let s = Secured::start(&[]);
    let user = s.client("jane", &["developers"]);
    let node = s.node("n1");
    for who in [("an ordinary user", &user), ("a node", &node)] {
        for path in [
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps/v1",
            "/openapi/v3",
            "/version",
            "/healthz",
            "/livez",
            "/readyz",
        ] {
            expect(&s, who, path, 200);
        }
        // The OIDC documents are for ServiceAccounts, as upstream binds them.
        expect(&s, who, "/.well-known/openid-configuration", 403);
    }
    let token = service_account_token(&s, "app");
    let (code, body) = with_token(&s, &token, "/.well-known/openid-configuration");
    assert_eq!(code, 200, "{body}");
    let (code, body) = with_token(&s, &token, "/openid/v1/jwks");
    assert_eq!(code, 200, "{body}");

    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, body) = s.curl_anonymous("GET", path);
        assert_eq!(code, 200, "anonymous GET {path}: {body}");
    }
    for path in [
        "/metrics",
        "/api",
        "/apis",
        "/apis/apps/v1",
        "/openapi/v3",
        "/openid/v1/jwks",
        "/api/v1/namespaces",
        "/debug/pprof/",
    ] {
        let (code, body) = s.curl_anonymous("GET", path);
        assert_eq!(code, 401, "anonymous GET {path}: {body}");
        assert_eq!(reason(&body), "Unauthorized", "{body}");
    }
    // Health is read, not written.
    let (code, body) = s.curl_anonymous("POST", "/healthz");
    assert_eq!(code, 401, "anonymous POST /healthz: {body}");
}
