//! What the node has and how it is doing, read from the kernel: CPUs,
//! memory (the smaller of the machine and the agent's cgroup limit), disk
//! under the agent's state directory, process IDs, and identity files.

use std::path::Path;

/// Capacity of the node, in the units Kubernetes reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub pods: u64,
}

/// Point-in-time readings for the pressure conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub memory_available_bytes: u64,
    pub disk_available_bytes: u64,
    pub disk_total_bytes: u64,
    pub pids_in_use: u64,
    pub pid_max: u64,
}

/// A field of /proc/meminfo in bytes.
pub fn meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        Some(match parts.next() {
            Some("kB") => n * 1024,
            _ => n,
        })
    })
}

/// The memory limit of the cgroup this process runs in, if one is set
/// (v2 `memory.max` or v1 `memory.limit_in_bytes`).
fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let candidates: Vec<String> = if controllers.is_empty() {
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .iter()
                .map(|m| format!("{m}{path}/memory.max"))
                .collect()
        } else if controllers.split(',').any(|c| c == "memory") {
            vec![format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")]
        } else {
            continue;
        };
        for c in candidates {
            if let Ok(v) = std::fs::read_to_string(&c) {
                if let Ok(n) = v.trim().parse::<u64>() {
                    // v1 reports "no limit" as a huge page-aligned number.
                    if n < (1 << 60) {
                        return Some(n);
                    }
                }
            }
        }
    }
    None
}

fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path with NUL"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and s a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = s.f_frsize as u64;
    Ok((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

/// Reads the node's capacity. `state_dir` is where pod data lives (its
/// filesystem is the ephemeral storage).
pub fn capacity(state_dir: &Path, max_pods: u64) -> std::io::Result<Capacity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")?;
    let total = meminfo(&mem, "MemTotal").unwrap_or(0);
    let memory_bytes = cgroup_memory_limit().map_or(total, |l| l.min(total));
    let (disk_total, _) = statvfs(state_dir)?;
    Ok(Capacity {
        cpus,
        memory_bytes,
        ephemeral_storage_bytes: disk_total,
        pods: max_pods,
    })
}

/// Reads current usage for the pressure conditions.
pub fn usage(state_dir: &Path) -> std::io::Result<Usage> {
    let mem = std::fs::read_to_string("/proc/meminfo")?;
    let (disk_total, disk_avail) = statvfs(state_dir)?;
    let pids_in_use = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count() as u64;
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    Ok(Usage {
        memory_available_bytes: meminfo(&mem, "MemAvailable").unwrap_or(0),
        disk_available_bytes: disk_avail,
        disk_total_bytes: disk_total,
        pids_in_use,
        pid_max,
    })
}

/// Identity and software of the node, for `status.nodeInfo`.
pub fn node_info(runtime_version: &str, agent_version: &str) -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    serde_json::json!({
        "machineID": read("/etc/machine-id"),
        "systemUUID": read("/sys/class/dmi/id/product_uuid"),
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": read("/proc/sys/kernel/osrelease"),
        "osImage": os_image,
        "containerRuntimeVersion": runtime_version,
        "kubeletVersion": agent_version,
        "kubeProxyVersion": agent_version,
        "operatingSystem": "linux",
        "architecture": arch(),
    })
}

/// The architecture in Kubernetes' (Go's) spelling.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The first IPv4 address of an interface that is up and not loopback, in
/// this process's network namespace.
pub fn internal_ip() -> Option<std::net::Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || ifa.ifa_flags & (libc::IFF_UP as u32) == 0
            || ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0
        {
            continue;
        }
        // SAFETY: ifa_addr is non-null; the family says how to read it.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: addrs came from getifaddrs.
    unsafe { libc::freeifaddrs(addrs) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_in_bytes() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), Some(24_576_000 * 1024));
        assert_eq!(meminfo(text, "MemAvailable"), Some(12_288_000 * 1024));
        assert_eq!(meminfo(text, "Mem"), None);
        assert_eq!(meminfo(text, "SwapTotal"), None);
    }

    #[test]
    fn this_machine_has_capacity() {
        let c = capacity(Path::new("/"), 110).unwrap();
        assert!(c.cpus >= 1);
        assert!(c.memory_bytes > 64 << 20);
        assert!(c.ephemeral_storage_bytes > 0);
        let u = usage(Path::new("/")).unwrap();
        assert!(u.pids_in_use > 0 && u.pids_in_use < u.pid_max);
        assert!(
            u.memory_available_bytes
                <= meminfo(
                    &std::fs::read_to_string("/proc/meminfo").unwrap(),
                    "MemTotal"
                )
                .unwrap()
        );
    }
}
