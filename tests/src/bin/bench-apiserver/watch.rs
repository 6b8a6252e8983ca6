//! Watch delivery: many watches open while objects are created at a
//! fixed rate, each event timed from its create.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use serde_json::Value;

use harness::benchkit::{build_request, expect, Http};

use crate::measure::Row;
use crate::run::create_configmap;
use crate::Args;

pub(crate) struct WatchResult {
    /// (event index, when the watcher read it), per watcher.
    pub(crate) seen: Vec<Vec<(usize, Instant)>>,
    /// (sent, response) instants of each create.
    pub(crate) creates: Vec<(Instant, Instant)>,
    pub(crate) ended_early: usize,
    pub(crate) errors: Vec<String>,
}

const WATCH_PREFIX: &str = "bench-watch-";

/// Pause between the last watch opening and the first create.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

/// Reads one watch stream, recording when each `bench-watch-<i>` arrives,
/// until it has seen `want` of them or `stop` is set.
async fn read_watch(
    resp: Response<Incoming>,
    want: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Vec<(usize, Instant)>, bool)> {
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = Vec::with_capacity(want);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => return Ok((seen, false)),
        };
        let Some(frame) = frame else {
            // The server ended the stream before every event arrived.
            return Ok((seen, true));
        };
        let now = Instant::now();
        let frame = frame.context("read a watch stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let ev: Value = serde_json::from_slice(&line).context("a watch event is not JSON")?;
            if ev["type"] == "ERROR" {
                bail!("watch error event: {}", ev["object"]);
            }
            let name = ev["object"]["metadata"]["name"].as_str().unwrap_or("");
            if let Some(i) = name
                .strip_prefix(WATCH_PREFIX)
                .and_then(|i| i.parse::<usize>().ok())
            {
                if ev["type"] == "ADDED" {
                    seen.push((i, now));
                }
            }
        }
        if seen.len() >= want {
            return Ok((seen, false));
        }
    }
}

pub(crate) async fn watch_phase(http: &Http, base: &str, a: &Args) -> Result<WatchResult> {
    // Start from the current revision: no initial list, only new events.
    let list = expect(
        http,
        Method::GET,
        base,
        "/api/v1/namespaces/default/configmaps?limit=1",
        None,
        StatusCode::OK,
    )
    .await?;
    let list: Value = serde_json::from_slice(&list).context("list response is not JSON")?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("list response has no metadata.resourceVersion"))?
        .to_string();

    eprintln!("  opening {} watches at resourceVersion {rv}", a.watchers);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    // Limits connection attempts in flight so the listen backlog never overflows.
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    let path = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=600"
    );
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..a.watchers {
        let (http, base, path) = (http.clone(), base.to_string(), path.clone());
        let (ready, opening, stop) = (ready.clone(), opening.clone(), stop_rx.clone());
        let want = a.watch_events;
        watchers.spawn(async move {
            let opened = async {
                let _permit = opening.acquire().await?;
                let req = build_request(Method::GET, &base, &path, None)?;
                let resp = tokio::time::timeout(Duration::from_secs(30), http.request(req))
                    .await
                    .map_err(|_| anyhow!("watch: no response headers after 30 s"))?
                    .context("open a watch")?;
                ensure!(resp.status() == StatusCode::OK, "watch: {}", resp.status());
                Ok(resp)
            }
            .await;
            // Counted as settled either way; failures are reported at the end.
            ready.add_permits(1);
            read_watch(opened?, want, stop).await
        });
    }
    let opened = Instant::now();
    let all_ready = ready.acquire_many(a.watchers as u32);
    if !matches!(
        tokio::time::timeout(Duration::from_secs(60), all_ready).await,
        Ok(Ok(_))
    ) {
        let _ = stop_tx.send(true);
        bail!("the watches were not all open after 60 s");
    }
    eprintln!(
        "    all open after {:.2} s; creating {} objects at {}/s",
        opened.elapsed().as_secs_f64(),
        a.watch_events,
        a.watch_rate
    );
    // Measure steady delivery, not a stream's first write: the server does
    // not set TCP_NODELAY, so an event written while the response headers
    // still wait for the client's delayed ACK is held back up to ~40 ms.
    tokio::time::sleep(SETTLE).await;

    let mut creates = Vec::with_capacity(a.watch_events);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.watch_rate));
    for i in 0..a.watch_events {
        tick.tick().await;
        let sent = Instant::now();
        create_configmap(http, base, "default", &format!("{WATCH_PREFIX}{i}")).await?;
        creates.push((sent, Instant::now()));
    }

    // Let the last events arrive, then stop whoever still waits.
    let drain = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(drain);
    let mut seen = Vec::with_capacity(a.watchers);
    let (mut ended_early, mut errors, mut drained) = (0, Vec::new(), false);
    loop {
        tokio::select! {
            _ = &mut drain, if !drained => {
                drained = true;
                let _ = stop_tx.send(true);
            }
            r = watchers.join_next() => match r {
                None => break,
                Some(Ok(Ok((s, early)))) => {
                    ended_early += usize::from(early);
                    seen.push(s);
                }
                Some(Ok(Err(e))) => errors.push(format!("{e:#}")),
                Some(Err(e)) => errors.push(format!("watcher task: {e}")),
            },
        }
    }
    ensure!(
        !seen.is_empty(),
        "every watch failed; first error: {}",
        errors.first().map_or("none", String::as_str)
    );
    Ok(WatchResult {
        seen,
        creates,
        ended_early,
        errors,
    })
}

pub(crate) fn watch_rows(w: &WatchResult, watchers: usize) -> (Row, Row, usize) {
    let mut from_resp = Vec::new();
    let mut from_sent = Vec::new();
    let mut early = 0;
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for s in &w.seen {
        for &(i, at) in s {
            let Some(&(sent, resp)) = w.creates.get(i) else {
                continue;
            };
            if at < resp {
                early += 1;
            }
            from_resp.push(at.saturating_duration_since(resp));
            from_sent.push(at.saturating_duration_since(sent));
            first = Some(first.map_or(sent, |f| f.min(sent)));
            last = Some(last.map_or(at, |l| l.max(at)));
        }
    }
    let elapsed = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    let conc = format!("{watchers} watches");
    let mk = |op: &str, lat: Vec<Duration>| {
        Row {
            op: op.into(),
            concurrency: conc.clone(),
            lat,
            elapsed,
            errors: 0,
            first_error: None,
            cpu: None,
        }
        .finish()
    };
    (
        mk("watch event, from create response", from_resp),
        mk("watch event, from create request", from_sent),
        early,
    )
}
