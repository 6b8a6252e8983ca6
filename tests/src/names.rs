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
