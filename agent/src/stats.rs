//! Resource usage of the node and its containers, as a kubelet's resource
//! metrics give it to metrics-server: CPU as a rate over the last sampling
//! window, memory as the working set, read from /proc and the pods'
//! cgroups. The node API serves the latest as `/stats/resource`, and the
//! API server turns it into metrics.k8s.io for `kubectl top`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::runtime::Runtime;

/// How often usage is sampled: the window each CPU rate covers, as
/// kubelets default to.
pub const WINDOW: Duration = Duration::from_secs(10);

/// CPU and memory of the node or of one container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub cpu_nano_cores: u64,
    pub memory_working_set_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub name: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<ContainerUsage>,
}

/// What `/stats/resource` answers: usage over the window ending at
/// `timestamp` (RFC 3339).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub timestamp: String,
    pub window_seconds: f64,
    pub node: Usage,
    pub pods: Vec<PodUsage>,
}

/// Cumulative counters at one instant.
struct Sample {
    at: Instant,
    node_cpu_ns: u64,
    /// Container id to its cumulative CPU nanoseconds.
    containers: HashMap<String, u64>,
}

/// Where the sampler reads: the runtime's containers, the log directory
/// that names their pods, and the cgroups they run in.
pub struct Sampler {
    runtime: Runtime,
    log_dir: PathBuf,
    cgroup_root: String,
    latest: Mutex<Option<Summary>>,
}

impl Sampler {
    pub fn new(runtime: Runtime, log_dir: PathBuf, cgroup_root: String) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            log_dir,
            cgroup_root,
            latest: Mutex::new(None),
        })
    }

    /// The usage over the last full window; None until two samples exist.
    pub fn latest(&self) -> Option<Summary> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Samples every `WINDOW`, for as long as the agent runs.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(WINDOW);
        let mut prev: Option<Sample> = None;
        loop {
            ticker.tick().await;
            let Ok(running) = self.runtime.list().await else {
                continue;
            };
            let ids: Vec<String> = running
                .into_iter()
                .filter(|c| c.status == "running")
                .map(|c| c.id)
                .collect();
            let this = self.clone();
            let sampled = tokio::task::spawn_blocking(move || this.sample(&ids, prev)).await;
            prev = match sampled {
                Ok((sample, summary)) => {
                    if let Some(s) = summary {
                        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                    }
                    Some(sample)
                }
                Err(_) => None,
            };
        }
    }

    /// Reads the counters now; with `prev`, also the rates since then.
    fn sample(&self, ids: &[String], prev: Option<Sample>) -> (Sample, Option<Summary>) {
        let pods = pod_names(&self.log_dir);
        let mut now = Sample {
            at: Instant::now(),
            node_cpu_ns: node_cpu_ns().unwrap_or(0),
            containers: HashMap::new(),
        };
        let mut memory = HashMap::new();
        for id in ids {
            let Some((uid, _)) = split_id(id) else {
                continue;
            };
            let group = format!("{}/pod{uid}/{id}", self.cgroup_root);
            if let Some(cpu) = cgroup_cpu_ns(&group) {
                now.containers.insert(id.clone(), cpu);
            }
            if let Some(mem) = cgroup_working_set(&group) {
                memory.insert(id.clone(), mem);
            }
        }
        let Some(prev) = prev else {
            return (now, None);
        };
        let elapsed = now.at.duration_since(prev.at).as_nanos().max(1) as f64;
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 * 1e9 / elapsed) as u64;
        let mut by_pod: HashMap<&str, PodUsage> = HashMap::new();
        for (id, cpu) in &now.containers {
            let (Some(then), Some((uid, container))) = (prev.containers.get(id), split_id(id))
            else {
                continue;
            };
            let Some((ns, pod)) = pods.get(uid) else {
                continue;
            };
            by_pod
                .entry(uid)
                .or_insert_with(|| PodUsage {
                    namespace: ns.clone(),
                    name: pod.clone(),
                    containers: Vec::new(),
                })
                .containers
                .push(ContainerUsage {
                    name: container.to_string(),
                    usage: Usage {
                        cpu_nano_cores: rate(*cpu, *then),
                        memory_working_set_bytes: memory.get(id).copied().unwrap_or(0),
                    },
                });
        }
        let mut pods: Vec<PodUsage> = by_pod.into_values().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for p in &mut pods {
            p.containers.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let summary = Summary {
            timestamp: k8s_openapi::jiff::Timestamp::now().to_string(),
            window_seconds: elapsed / 1e9,
            node: Usage {
                cpu_nano_cores: rate(now.node_cpu_ns, prev.node_cpu_ns),
                memory_working_set_bytes: node_working_set().unwrap_or(0),
            },
            pods,
        };
        (now, Some(summary))
    }
}

/// A container id's pod uid and container name (`{uid}_{name}_{attempt}`).
fn split_id(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.splitn(3, '_');
    let (uid, name) = (parts.next()?, parts.next()?);
    parts.next()?;
    Some((uid, name))
}

/// Pod uid to (namespace, name), from the log directories
/// (`{ns}_{pod}_{uid}`, none of which can hold an underscore).
fn pod_names(log_dir: &Path) -> HashMap<String, (String, String)> {
    let Ok(dir) = std::fs::read_dir(log_dir) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(3, '_');
            let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
            Some((uid.to_string(), (ns.to_string(), pod.to_string())))
        })
        .collect()
}

/// CPU time every CPU spent busy, in nanoseconds, from /proc/stat.
fn node_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat)
}

fn parse_proc_stat(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and
    // iowait are busy.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(busy * (1_000_000_000 / hz))
}

/// Memory in use on the node: what the kernel could not hand out at once.
fn node_working_set() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let v = info.lines().find_map(|l| l.strip_prefix(name))?;
        v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

/// The cgroup v1 controller directory, or the v2 directory when the
/// machine has no v1 hierarchy for it.
fn cgroup_dir(controller: &str, group: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    if v1.is_dir() {
        v1.join(group.trim_start_matches('/'))
    } else {
        Path::new("/sys/fs/cgroup").join(group.trim_start_matches('/'))
    }
}

/// A cgroup's cumulative CPU time in nanoseconds.
fn cgroup_cpu_ns(group: &str) -> Option<u64> {
    let dir = cgroup_dir("cpuacct", group);
    if let Ok(v) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        return v.trim().parse().ok();
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat_field(&stat, "usage_usec").map(|us| us * 1000)
}

/// A cgroup's working set: its memory use less the inactive file cache the
/// kernel can drop, as cAdvisor counts it.
fn cgroup_working_set(group: &str) -> Option<u64> {
    let dir = cgroup_dir("memory", group);
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    if let Ok(v) = std::fs::read_to_string(dir.join("memory.usage_in_bytes")) {
        let usage: u64 = v.trim().parse().ok()?;
        return Some(usage.saturating_sub(stat_field(&stat, "total_inactive_file").unwrap_or(0)));
    }
    let usage: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(usage.saturating_sub(stat_field(&stat, "inactive_file").unwrap_or(0)))
}

/// The value of `name` in a cgroup `*.stat` file of `key value` lines.
fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_stat_files_parse() {
        assert_eq!(split_id("0b1c-22_main_0"), Some(("0b1c-22", "main")));
        assert_eq!(split_id("sandbox"), None);
        let stat = "cache 10\ntotal_inactive_file 4096\ninactive_file 1\n";
        assert_eq!(stat_field(stat, "total_inactive_file"), Some(4096));
        assert_eq!(stat_field(stat, "inactive_file"), Some(1));
        assert_eq!(stat_field(stat, "missing"), None);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let busy = parse_proc_stat("cpu  10 2 3 100 50 1 1 1 0 0\ncpu0 1 1 1 1 1 1 1 1\n");
        assert_eq!(busy, Some(18 * (1_000_000_000 / hz)));
    }
}
