//! Unique, short names for what tests create on the machine.
//!
//! Interface names are limited to 15 bytes, so names are `kt<pid in base 36>-<tag><n>`.

use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix shared by everything this process creates.
pub fn prefix() -> String {
    format!("kt{}", to_base36(std::process::id()))
}

/// A fresh name `prefix-<tag><n>` unique within this process.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}-{}{}", prefix(), tag, to_base36(n));
    assert!(name.len() <= 15, "name {name} is too long for an interface");
    name
}

fn to_base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

fn from_base36(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 36).ok()
}

/// Removes network namespaces left by test processes that no longer run
/// (killed before their drops ran). Namespaces of live processes are kept.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kt")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| from_base36(pid))
        else {
            continue;
        };
        let live = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !live {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &name])
                .status();
        }
    }
}
