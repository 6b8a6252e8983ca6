//! The API server's `/metrics`: requests by verb, resource and code, their
//! latency by verb and resource, and the watches open now, under the names
//! kube-apiserver uses, so existing dashboards and alerts read them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;

use super::request::{Query, Target};
use crate::component::metrics::LATENCY_BUCKETS;

/// One latency series: bucket counts, count, sum in seconds.
type Series = (Vec<u64>, u64, f64);

/// Request counts and latencies; one per API server.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    /// Per (verb, resource).
    latency: Mutex<BTreeMap<(&'static str, String), Series>>,
    watches: Mutex<BTreeMap<String, AtomicI64>>,
}

/// The Kubernetes verb of a request, as kube-apiserver labels it.
pub fn verb(method: &Method, target: &Target, query: &Query) -> &'static str {
    let collection = target.name.is_none();
    match *method {
        Method::GET if query.flag("watch") => "WATCH",
        Method::GET if collection => "LIST",
        Method::GET if matches!(target.sub.as_deref(), Some("exec" | "portforward")) => "CONNECT",
        Method::GET => "GET",
        Method::POST if matches!(target.sub.as_deref(), Some("exec" | "portforward")) => "CONNECT",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if collection => "DELETECOLLECTION",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// The resource label: `pods`, or `pods/status` style with `subresource`
/// kept apart as kube-apiserver does, here joined for one label.
pub fn resource(target: &Target) -> String {
    match &target.sub {
        Some(sub) => format!("{}/{sub}", target.res.plural),
        None => target.res.plural.to_string(),
    }
}

/// A watch while it is open: counted in `apiserver_longrunning_requests`.
pub struct OpenWatch {
    metrics: Arc<Metrics>,
    resource: String,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(g) = self
            .metrics
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.resource)
        {
            g.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Metrics {
    /// Counts one finished request; latency is kept for all but watches
    /// and exec, which last as long as the client wants.
    pub fn observe(&self, verb: &'static str, resource: &str, code: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((verb, resource.to_string(), code))
            .or_default() += 1;
        if matches!(verb, "WATCH" | "CONNECT") {
            return;
        }
        let s = took.as_secs_f64();
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, count, sum) = latency
            .entry((verb, resource.to_string()))
            .or_insert_with(|| (vec![0; LATENCY_BUCKETS.len()], 0, 0.0));
        for (b, n) in LATENCY_BUCKETS.iter().zip(buckets.iter_mut()) {
            if s <= *b {
                *n += 1;
            }
        }
        *count += 1;
        *sum += s;
    }

    /// Marks a watch on `resource` open until the guard drops.
    pub fn watch(self: &Arc<Self>, resource: &str) -> OpenWatch {
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(resource.to_string())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        OpenWatch {
            metrics: self.clone(),
            resource: resource.to_string(),
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP apiserver_request_total Requests by verb, resource and HTTP code.\n\
             # TYPE apiserver_request_total counter\n",
        );
        for ((verb, res, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",resource=\"{res}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP apiserver_request_duration_seconds Time to answer a request (not watches or exec), by verb and resource.\n\
             # TYPE apiserver_request_duration_seconds histogram\n",
        );
        for ((verb, res), (buckets, count, sum)) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let labels = format!("verb=\"{verb}\",resource=\"{res}\"");
            for (b, n) in LATENCY_BUCKETS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out.push_str(
            "# HELP apiserver_longrunning_requests Watches open now, by resource.\n\
             # TYPE apiserver_longrunning_requests gauge\n",
        );
        for (res, n) in self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "apiserver_longrunning_requests{{verb=\"WATCH\",resource=\"{res}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_latencies_and_open_watches_render_with_labels() {
        let m = Arc::new(Metrics::default());
        m.observe("LIST", "pods", 200, Duration::from_millis(3));
        m.observe("LIST", "pods", 200, Duration::from_millis(30));
        m.observe("POST", "pods", 422, Duration::from_millis(1));
        m.observe("WATCH", "pods", 200, Duration::from_secs(60));
        let w = m.watch("pods");
        let text = m.render();
        assert!(
            text.contains(
                "apiserver_request_total{verb=\"LIST\",resource=\"pods\",code=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("code=\"422\"} 1"), "{text}");
        assert!(text.contains(
            "apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"pods\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "apiserver_request_duration_seconds_count{verb=\"LIST\",resource=\"pods\"} 2"
        ));
        // Watches are counted, but their minute is no latency.
        assert!(
            !text.contains("verb=\"WATCH\",resource=\"pods\",le="),
            "{text}"
        );
        assert!(text.contains("apiserver_longrunning_requests{verb=\"WATCH\",resource=\"pods\"} 1"));
        drop(w);
        assert!(m
            .render()
            .contains("apiserver_longrunning_requests{verb=\"WATCH\",resource=\"pods\"} 0"));
    }
}
