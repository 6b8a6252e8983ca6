//! The phases in order: raw etcd, API server writes, reads, watches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use harness::benchkit::{create_namespace, expect, http_client, target_dir, Env, Http};

use crate::measure::{closed_loop, measured, open_loop, Row};
use crate::watch::{watch_phase, watch_rows, SETTLE};
use crate::Args;

fn configmap(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "data": {"greeting": "hello", "count": "1"},
        })
        .to_string(),
    )
}

pub(crate) async fn create_configmap(http: &Http, base: &str, ns: &str, name: &str) -> Result<()> {
    expect(
        http,
        Method::POST,
        base,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(configmap(name)),
        StatusCode::CREATED,
    )
    .await
    .map(|_| ())
}

/// Makes room for one socket per watch in this process and the API server
/// (which inherits the limit).
fn raise_fd_limit(need: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    ensure!(
        lim.rlim_max >= need,
        "{need} open files are needed but the hard limit is {}; use fewer --watchers",
        lim.rlim_max
    );
    lim.rlim_cur = need as libc::rlim_t;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}

fn padded_value(size: usize) -> Vec<u8> {
    let skeleton = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "default"}, "data": {"pad": ""}}).to_string();
    let pad = size.saturating_sub(skeleton.len());
    json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "default"}, "data": {"pad": "x".repeat(pad)}})
        .to_string()
        .into_bytes()
}

pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

pub(crate) async fn run(a: &Args, env: &mut Env) -> Result<Report> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let c = a.concurrency;
    let open = Duration::from_secs_f64(a.rate_duration);
    let bin = match &a.apiserver_bin {
        Some(b) => b.clone(),
        None => target_dir().join("release").join("control-plane"),
    };
    raise_fd_limit(a.watchers as u64 + c as u64 + 1024)?;

    eprintln!("==> starting etcd and the API server ({})", bin.display());
    let etcd = env.start_etcd(&a.etcd_bin).await?;
    let http = http_client();
    env.start_apiserver(&bin, &http).await?;
    eprintln!("    etcd {}, API server {}", env.etcd_url, env.api_url);
    let base = env.api_url.clone();

    eprintln!("==> raw etcd (keys outside /registry/, so the API server's watch ignores them)");
    let value = Arc::new(padded_value(a.value_size));
    let vlen = value.len();
    // One shared client (one HTTP/2 connection), as in the API server.
    let kv = {
        let (etcd, value) = (etcd.clone(), value.clone());
        move || (etcd.kv_client(), value.clone())
    };
    let put = {
        let kv = kv.clone();
        move |key: String| {
            let (mut kv, value) = kv();
            async move {
                kv.put(key, value.as_slice(), None)
                    .await
                    .context("etcd put")?;
                Ok(())
            }
        }
    };
    // What the API server's create does: read the namespace, then write
    // the object only if its key does not exist.
    let get_txn = {
        let kv = kv.clone();
        move |key: String, get: Option<GetOptions>| {
            let (mut kv, value) = kv();
            async move {
                if let Some(opts) = get {
                    kv.get("/registry/namespaces/default", Some(opts))
                        .await
                        .context("etcd get")?;
                }
                let txn = Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)]);
                let r = kv.txn(txn).await.context("etcd txn")?;
                ensure!(r.succeeded(), "txn on a fresh key did not succeed");
                Ok(())
            }
        }
    };
    {
        let put = put.clone();
        let op = format!("etcd put ({vlen} B value, distinct keys)");
        rows.push(
            measured(
                env,
                closed_loop(&op, c, a.closed(), move |w, i| {
                    put(format!("/bench/put/{w}/{i}"))
                }),
            )
            .await?,
        );
    }
    {
        let get_txn = get_txn.clone();
        let op = format!("etcd txn put-if-absent ({vlen} B)");
        rows.push(
            measured(
                env,
                closed_loop(&op, c, a.closed(), move |w, i| {
                    get_txn(format!("/bench/txn/{w}/{i}"), None)
                }),
            )
            .await?,
        );
    }
    {
        let get_txn = get_txn.clone();
        let op = "etcd get + txn put-if-absent (a create's etcd calls)";
        rows.push(
            measured(
                env,
                closed_loop(op, c, a.closed(), move |w, i| {
                    get_txn(format!("/bench/gettxn/{w}/{i}"), Some(GetOptions::new()))
                }),
            )
            .await?,
        );
    }
    {
        let get_txn = get_txn.clone();
        let op = "etcd serializable get + txn put-if-absent";
        rows.push(
            measured(
                env,
                closed_loop(op, c, a.closed(), move |w, i| {
                    get_txn(
                        format!("/bench/sgettxn/{w}/{i}"),
                        Some(GetOptions::new().with_serializable()),
                    )
                }),
            )
            .await?,
        );
    }
    {
        let op = format!("etcd put ({vlen} B value)");
        rows.push(
            measured(
                env,
                open_loop(&op, a.rate, open, move |i| put(format!("/bench/open/{i}"))),
            )
            .await?,
        );
    }
    {
        let op = "etcd get + txn put-if-absent";
        rows.push(
            measured(
                env,
                open_loop(op, a.rate, open, move |i| {
                    get_txn(format!("/bench/opengettxn/{i}"), Some(GetOptions::new()))
                }),
            )
            .await?,
        );
    }

    eprintln!("==> API server writes");
    // Open the pool's connections before measuring.
    let mut warm = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (http, base) = (http.clone(), base.clone());
        warm.spawn(async move {
            expect(&http, Method::GET, &base, "/version", None, StatusCode::OK).await
        });
    }
    while let Some(r) = warm.join_next().await {
        r.context("warm-up task")??;
    }
    let create = {
        let (http, base) = (http.clone(), base.clone());
        move |name: String| {
            let (http, base) = (http.clone(), base.clone());
            async move { create_configmap(&http, &base, "default", &name).await }
        }
    };
    {
        let create = create.clone();
        rows.push(
            measured(
                env,
                closed_loop("apiserver create configmap", c, a.closed(), move |w, i| {
                    create(format!("bench-c-{w}-{i}"))
                }),
            )
            .await?,
        );
    }
    rows.push(
        measured(
            env,
            open_loop("apiserver create configmap", a.rate, open, move |i| {
                create(format!("bench-o-{i}"))
            }),
        )
        .await?,
    );

    eprintln!("==> API server reads");
    let ns = "bench-list";
    create_namespace(&http, &base, ns).await?;
    eprintln!(
        "  filling namespace {ns} with {} configmaps",
        a.list_objects
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (http, base, next, n) = (http.clone(), base.clone(), next.clone(), a.list_objects);
        fill.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                create_configmap(&http, &base, ns, &format!("obj-{i}")).await?;
            }
        });
    }
    while let Some(r) = fill.join_next().await {
        r.context("fill task")?
            .context("filling the list namespace")?;
    }
    let fetch = {
        let (http, base) = (http.clone(), base.clone());
        move |path: String| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                expect(&http, Method::GET, &base, &path, None, StatusCode::OK)
                    .await
                    .map(|_| ())
            }
        }
    };
    {
        let (fetch, n) = (fetch.clone(), a.list_objects as u64);
        rows.push(
            measured(
                env,
                closed_loop("apiserver get configmap", c, a.closed(), move |w, i| {
                    let k = (w as u64 * 7919 + i * 31) % n;
                    fetch(format!("/api/v1/namespaces/{ns}/configmaps/obj-{k}"))
                }),
            )
            .await?,
        );
    }
    let list_path = format!("/api/v1/namespaces/{ns}/configmaps");
    let body = expect(&http, Method::GET, &base, &list_path, None, StatusCode::OK).await?;
    let list: Value = serde_json::from_slice(&body).context("list response is not JSON")?;
    let items = list["items"].as_array().map_or(0, Vec::len);
    ensure!(
        items == a.list_objects,
        "the list returned {items} items, wanted {}",
        a.list_objects
    );
    notes.push(format!(
        "A list returns {items} configmaps, {} KiB of JSON.",
        body.len() / 1024
    ));
    rows.push(
        measured(
            env,
            closed_loop(
                &format!("apiserver list {items} configmaps"),
                c,
                a.closed(),
                move |_, _| fetch(list_path.clone()),
            ),
        )
        .await?,
    );

    if a.watchers > 0 && a.watch_events > 0 {
        eprintln!("==> watch delivery");
        let t0 = Instant::now();
        let before = env.cpu(t0);
        let w = watch_phase(&http, &base, a).await?;
        let cpu = env.cpu(t0).minus(before);
        env.check_alive()?;
        let (mut from_resp, from_sent, early) = watch_rows(&w, a.watchers);
        from_resp.cpu = Some(cpu);
        let want = a.watchers * a.watch_events;
        notes.push(format!(
            "Watch: {} of {want} watcher×event pairs delivered ({:.1} %); {early} arrived before \
             the create's response (counted as 0 ms from the response); {} streams ended early; \
             {} watches failed{}. The first create came {} ms after the last watch opened; the CPU \
             figures include opening the watches.",
            from_resp.lat.len(),
            100.0 * from_resp.lat.len() as f64 / want as f64,
            w.ended_early,
            w.errors.len(),
            w.errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            SETTLE.as_millis()
        ));
        rows.push(from_resp);
        rows.push(from_sent);
    }
    Ok(Report { rows, notes })
}
