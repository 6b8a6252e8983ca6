//! The OCI runtime configuration (`config.json`) of one container: what
//! Kubernetes users expect by default (containerd's capability set,
//! masked and read-only /proc paths, no_new_privs, per-container PID
//! namespace, the pod's network, IPC and UTS namespaces) with the pod's
//! securityContext and resources applied.

use std::path::PathBuf;

use serde_json::{json, Value};

/// containerd's default capabilities, which Kubernetes users rely on.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A bind mount into the container.
#[derive(Clone, Debug)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything the configuration is made from.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups besides `gid` (the pod's `supplementalGroups`).
    pub groups: Vec<u32>,
    pub hostname: String,
    /// Paths of the pod's bind-mounted namespaces.
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// A PID namespace to join (an ephemeral container's target's); a new
    /// one when unset.
    pub pidns: Option<PathBuf>,
    /// Run the process on a terminal (the container's `tty: true`).
    pub terminal: bool,
    /// Relative to each cgroup hierarchy's root.
    pub cgroups_path: String,
    pub cpu_shares: Option<u64>,
    /// Microseconds per 100 ms period.
    pub cpu_quota: Option<i64>,
    pub memory_limit: Option<i64>,
    pub binds: Vec<Bind>,
    pub privileged: bool,
    pub read_only_rootfs: bool,
    pub caps_add: Vec<String>,
    pub caps_drop: Vec<String>,
    pub no_new_privileges: bool,
    /// Apply the default seccomp profile (off for privileged containers and
    /// `seccompProfile: Unconfined`).
    pub seccomp: bool,
}

fn cap_name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    if c.starts_with("CAP_") {
        c
    } else {
        format!("CAP_{c}")
    }
}

/// The effective capability set: defaults (or all, when privileged) plus
/// `add`, minus `drop` (`ALL` drops everything first, as in Kubernetes).
pub fn capabilities(s: &ContainerSpec) -> Vec<String> {
    let mut caps: Vec<String> = if s.privileged {
        all_caps().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    if s.caps_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        caps.clear();
    }
    for d in &s.caps_drop {
        let d = cap_name(d);
        caps.retain(|c| *c != d);
    }
    for a in &s.caps_add {
        let a = if a.eq_ignore_ascii_case("ALL") {
            for c in all_caps() {
                if !caps.iter().any(|x| x == c) {
                    caps.push(c.to_string());
                }
            }
            continue;
        } else {
            cap_name(a)
        };
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    caps
}

/// Every capability the node grants: those of `ALL_CAPS` in the agent's
/// own bounding set, as containerd gives privileged containers the
/// runtime's capabilities. A node (itself in a container, say) may lack
/// some, and asking for one it lacks makes creating the container fail.
fn all_caps() -> impl Iterator<Item = &'static str> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(move |(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| *c)
}

/// Every capability, in the order of their numbers (the index is the bit).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The open-files limit containers get: containerd's 1048576, or the
/// agent's own hard limit when that is lower (raising it needs privileges
/// a container runtime may not have).
fn nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    l.rlim_max.min(1_048_576)
}

/// System calls the default profile refuses with EPERM: those containerd's
/// default profile keeps from containers without extra capabilities (kernel
/// modules and kexec, clocks, mounts and namespaces, tracing other
/// processes, keyrings, BPF, perf, io_uring, handles to host files, reboot
/// and the like).
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// The clone flags that make new namespaces; clone with any of them is
/// refused, as in containerd's profile (CLONE_NEWTIME shares its bit with
/// clone's exit signal and is only reachable through clone3 and unshare,
/// both refused whole).
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The default seccomp profile in OCI form.
pub fn default_seccomp() -> Value {
    let arches: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => &[],
    };
    let mut rules = vec![
        json!({"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}),
        // clone3 passes its flags in memory a filter cannot read. ENOSYS,
        // as containerd answers, makes the C libraries fall back to clone,
        // whose flags the rules below do check.
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
    ];
    // One rule per flag: the conditions of one rule must all hold, and a
    // clone asking for any single namespace is to be refused. The mask and
    // the value are the same, so the operand order does not matter.
    for flag in CLONE_NAMESPACE_FLAGS {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arches,
        "syscalls": rules,
    })
}

/// The process's supplementary groups: its primary group first, as
/// containerd lists them, then the others. Never empty: libcontainer calls
/// setgroups only for a non-empty list, and the container would otherwise
/// keep the runtime helper's own groups.
fn additional_gids(s: &ContainerSpec) -> Vec<u32> {
    let mut gids = vec![s.gid];
    for g in &s.groups {
        if !gids.contains(g) {
            gids.push(*g);
        }
    }
    gids
}

/// The `config.json` for `s`.
pub fn config_json(s: &ContainerSpec) -> Value {
    let caps = capabilities(s);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if s.privileged { "rw" } else { "ro" }]}),
    ];
    for b in &s.binds {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if b.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": options}));
    }
    let pid = match &s.pidns {
        Some(p) => json!({"type": "pid", "path": p}),
        None => json!({"type": "pid"}),
    };
    let mut namespaces = vec![pid, json!({"type": "mount"})];
    for (ty, path) in [("network", &s.netns), ("ipc", &s.ipcns), ("uts", &s.utsns)] {
        match path {
            Some(p) => namespaces.push(json!({"type": ty, "path": p})),
            None => namespaces.push(json!({"type": ty})),
        }
    }
    let mut resources = json!({"devices": [{"allow": !s.privileged, "access": "rwm"}]});
    if !s.privileged {
        resources["devices"] = json!([{"allow": false, "access": "rwm"}]);
    }
    if let Some(limit) = s.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = s.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = s.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(100_000));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": s.cgroups_path,
        "resources": resources,
    });
    if !s.privileged {
        linux["maskedPaths"] = json!(MASKED);
        linux["readonlyPaths"] = json!(READ_ONLY);
    }
    if s.seccomp && !s.privileged {
        linux["seccomp"] = default_seccomp();
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": s.terminal,
            "user": {"uid": s.uid, "gid": s.gid, "additionalGids": additional_gids(s)},
            "args": s.args,
            "env": s.env,
            "cwd": if s.cwd.is_empty() { "/" } else { s.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile(), "soft": nofile()}],
            "noNewPrivileges": s.no_new_privileges,
        },
        "root": {"path": s.rootfs, "readonly": s.read_only_rootfs},
        "hostname": s.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_what_kubernetes_users_expect() {
        let s = ContainerSpec {
            rootfs: "/r".into(),
            args: vec!["sh".into()],
            no_new_privileges: true,
            ..Default::default()
        };
        let c = config_json(&s);
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert!(
            c["linux"].get("seccomp").is_none(),
            "seccomp only when asked"
        );
        let c = config_json(&ContainerSpec {
            seccomp: true,
            ..s.clone()
        });
        assert_eq!(
            c["linux"]["seccomp"]["syscalls"][0]["action"],
            "SCMP_ACT_ERRNO"
        );
        let caps = c["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPS.len());
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert!(c["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(c["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/sys"));
        assert_eq!(c["linux"]["namespaces"][0]["type"], "pid");
    }

    #[test]
    fn default_profile_refuses_namespaces_and_kernel_interfaces() {
        let p = default_seccomp();
        let rules = p["syscalls"].as_array().unwrap();
        let action_of = |name: &str| -> Vec<(String, i64, bool)> {
            rules
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .map(|r| {
                    (
                        r["action"].as_str().unwrap().to_string(),
                        r["errnoRet"].as_i64().unwrap(),
                        r.get("args").is_some(),
                    )
                })
                .collect()
        };
        for name in [
            "unshare",
            "io_uring_setup",
            "keyctl",
            "bpf",
            "perf_event_open",
            "mount",
            "kexec_load",
            "finit_module",
            "open_by_handle_at",
        ] {
            assert_eq!(
                action_of(name),
                [("SCMP_ACT_ERRNO".to_string(), i64::from(libc::EPERM), false)],
                "{name}"
            );
        }
        assert_eq!(
            action_of("clone3"),
            [("SCMP_ACT_ERRNO".to_string(), i64::from(libc::ENOSYS), false)]
        );
        let clone = action_of("clone");
        assert_eq!(clone.len(), 7);
        assert!(clone.iter().all(|(_, errno, args)| *errno == 1 && *args));
        let user_rule = rules.iter().any(|r| {
            r["names"][0] == "clone"
                && r["args"][0]["value"] == json!(libc::CLONE_NEWUSER as u64)
                && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
        });
        assert!(user_rule);
        assert!(action_of("clone")
            .iter()
            .all(|(a, _, _)| a == "SCMP_ACT_ERRNO"));
        assert!(action_of("read").is_empty());
    }

    #[test]
    fn supplementary_groups_start_with_the_primary_group() {
        let s = ContainerSpec {
            gid: 20,
            groups: vec![30, 20, 40],
            ..Default::default()
        };
        assert_eq!(
            config_json(&s)["process"]["user"]["additionalGids"],
            json!([20, 30, 40])
        );
        // Without any, the list still holds the primary group.
        assert_eq!(
            config_json(&ContainerSpec::default())["process"]["user"]["additionalGids"],
            json!([0])
        );
    }

    #[test]
    fn security_context_capabilities() {
        let mut s = ContainerSpec {
            caps_add: vec!["NET_ADMIN".into()],
            caps_drop: vec!["chown".into()],
            ..Default::default()
        };
        let caps = capabilities(&s);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        s.caps_drop = vec!["ALL".into()];
        s.caps_add = vec!["NET_BIND_SERVICE".into()];
        assert_eq!(capabilities(&s), ["CAP_NET_BIND_SERVICE"]);
        s.privileged = true;
        s.caps_drop.clear();
        assert!(capabilities(&s).contains(&"CAP_SYS_ADMIN".to_string()));
    }
}
