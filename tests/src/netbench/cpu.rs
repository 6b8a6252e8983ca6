//! CPU figures of the whole machine from /proc: how busy it is, its
//! clock, and the packet work the kernel deferred to its own threads.

use std::time::Duration;

/// (busy, total) CPU time of the whole machine so far, in clock ticks.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user and nice).
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The CPU clock in Hz, from /proc/cpuinfo (a VM without performance
/// counters has no cycle count of its own; CPU time times the clock is
/// the cycles a busy CPU spent).
pub fn cpu_hz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(mhz * 1e6)
}

/// Clock ticks per second of /proc's CPU times.
pub(super) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time the ksoftirqd threads have used so far, in clock ticks:
/// packet work the kernel deferred from the processes that caused it.
pub(super) fn softirq_thread_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            // pid (comm) state ... utime stime: fields 14 and 15, counted
            // after the comm, which may hold spaces.
            let (head, rest) = stat.rsplit_once(')')?;
            if !head.contains("(ksoftirqd/") {
                return None;
            }
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// How busy the machine's CPUs are over two seconds in which the bench
/// itself measures nothing: the load it competes with (the idle testbed
/// included), in percent.
pub fn background_busy() -> f64 {
    let (b0, t0) = cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let (b1, t1) = cpu_ticks();
    100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64
}
