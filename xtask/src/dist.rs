//! `cargo xtask dist`: a release for machines without a Rust toolchain.
//!
//! Writes `target/dist/kestrel-<version>-<arch>/` and a `.tar.gz` of it:
//! `bin/` (control-plane, agent, kestrel-cni), `systemd/` (the units and
//! etcd's drop-in for a member of several control planes),
//! `config/` (one environment file per unit), `install.sh` and `README.md`.
//! Units, etcd's configuration, the installer and the README come from
//! `deploy/`; the other environment files are generated from the packaged
//! binaries' own `--help`, so they document exactly the flags that exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::util;

#[derive(clap::Args)]
pub struct DistArgs {
    /// Build and package debug binaries (quicker to build, larger and slower).
    #[arg(long, conflicts_with = "bin_dir")]
    debug: bool,
    /// Package the binaries already in DIR (e.g. target/debug); build nothing.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the release directory and tarball go [default: target/dist].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write only the directory, not the .tar.gz.
    #[arg(long)]
    no_tarball: bool,
}

/// The binaries a release holds, and the packages that build them.
const BINARIES: &[(&str, &str)] = &[
    ("control-plane", "kestrel-control-plane"),
    ("agent", "kestrel-agent"),
    ("kestrel-cni", "kestrel-cni"),
];

/// The systemd units in `deploy/systemd/`.
const UNITS: &[&str] = &[
    "kestrel-etcd",
    "kestrel-apiserver",
    "kestrel-scheduler",
    "kestrel-controller-manager",
    "kestrel-agent",
];

/// A daemon whose environment file is generated from its `--help`.
struct Daemon {
    /// `config/<name>.env`, installed as `/etc/kestrel/<name>.env`.
    name: &'static str,
    /// The variable the unit expands into the command line.
    var: &'static str,
    /// The binary and subcommand.
    command: &'static [&'static str],
    /// Flags the unit sets itself, with how; they must not be in `var`.
    by_unit: &'static [(&'static str, &'static str)],
}

const DAEMONS: &[Daemon] = &[
    Daemon {
        name: "apiserver",
        var: "APISERVER_ARGS",
        command: &["control-plane", "apiserver"],
        by_unit: &[],
    },
    Daemon {
        name: "scheduler",
        var: "SCHEDULER_ARGS",
        command: &["control-plane", "scheduler"],
        by_unit: &[(
            "--kubeconfig",
            "set by the unit: KUBECONFIG names /etc/kestrel/scheduler.kubeconfig, \
             handed over as a systemd credential",
        )],
    },
    Daemon {
        name: "controller-manager",
        var: "CONTROLLER_MANAGER_ARGS",
        command: &["control-plane", "controller-manager"],
        by_unit: &[(
            "--kubeconfig",
            "set by the unit: KUBECONFIG names /etc/kestrel/controller-manager.kubeconfig, \
             handed over as a systemd credential",
        )],
    },
    Daemon {
        name: "agent",
        var: "AGENT_ARGS",
        command: &["agent", "run"],
        by_unit: &[],
    },
];

pub fn run(args: DistArgs) -> anyhow::Result<()> {
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => build(args.debug)?,
    };
    let out = args
        .out
        .unwrap_or_else(|| util::root().join("target").join("dist"));
    let name = format!(
        "kestrel-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let dir = out.join(&name);
    util::step(&format!("writing {}", dir.display()));
    layout(&bin_dir, &dir)?;
    if !args.no_tarball {
        let tarball = out.join(format!("{name}.tar.gz"));
        util::step(&format!("writing {}", tarball.display()));
        // Owned by root in the archive whoever built it: it unpacks as an
        // installation, not as someone's home directory.
        util::run(
            Command::new("tar")
                .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
                .arg("-czf")
                .arg(&tarball)
                .arg("-C")
                .arg(&out)
                .arg(&name),
        )?;
    }
    eprintln!("install with {}/install.sh --help", dir.display());
    Ok(())
}

/// Builds the release binaries (or debug ones) and returns their directory.
fn build(debug: bool) -> anyhow::Result<PathBuf> {
    util::step("building the binaries");
    let mut cmd = vec!["build", "--bins"];
    for (_, package) in BINARIES {
        cmd.extend(["-p", package]);
    }
    if !debug {
        cmd.push("--release");
    }
    util::cargo(&cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("target"));
    Ok(target.join(if debug { "debug" } else { "release" }))
}

/// Lays out the release directory `dir` (replacing an old one) with the
/// binaries from `bin_dir`.
pub fn layout(bin_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => {}
    }
    for sub in ["bin", "systemd", "config"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for (bin, _) in BINARIES {
        let from = bin_dir.join(bin);
        anyhow::ensure!(from.exists(), "{} is missing", from.display());
        copy_binary(&from, &dir.join("bin").join(bin))?;
    }
    let deploy = util::root().join("deploy");
    for unit in UNITS {
        let file = format!("{unit}.service");
        copy(
            &deploy.join("systemd").join(&file),
            &dir.join("systemd").join(&file),
            0o644,
        )?;
    }
    // The member's drop-in is installed only on control planes with peers.
    std::fs::create_dir_all(dir.join("systemd/kestrel-etcd.service.d"))?;
    copy(
        &deploy.join("systemd/kestrel-etcd.service.d/member.conf"),
        &dir.join("systemd/kestrel-etcd.service.d/member.conf"),
        0o644,
    )?;
    for env in ["etcd.env", "etcd-member.env"] {
        copy(
            &deploy.join("config").join(env),
            &dir.join("config").join(env),
            0o644,
        )?;
    }
    copy(&deploy.join("install.sh"), &dir.join("install.sh"), 0o755)?;
    copy(&deploy.join("README.md"), &dir.join("README.md"), 0o644)?;
    std::fs::write(
        dir.join("VERSION"),
        format!("{}\n", env!("CARGO_PKG_VERSION")),
    )?;
    for daemon in DAEMONS {
        let bin = dir.join("bin").join(daemon.command[0]);
        let help = Command::new(&bin)
            .args(&daemon.command[1..])
            .arg("--help")
            // Its value would show in the help as the flag's value.
            .env_remove("KUBECONFIG")
            .output()
            .with_context(|| format!("running {} --help", bin.display()))?;
        anyhow::ensure!(
            help.status.success(),
            "{} --help failed: {}",
            daemon.command.join(" "),
            String::from_utf8_lossy(&help.stderr)
        );
        let flags = parse_help(&String::from_utf8_lossy(&help.stdout));
        anyhow::ensure!(
            !flags.is_empty(),
            "no flags found in `{} --help`",
            daemon.command.join(" ")
        );
        std::fs::write(
            dir.join("config").join(format!("{}.env", daemon.name)),
            env_file(daemon, &flags),
        )?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies a binary without its debug information (symbols stay, so
/// backtraces keep their function names); a plain copy where `strip` is
/// missing.
fn copy_binary(from: &Path, to: &Path) -> anyhow::Result<()> {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        copy(from, to, 0o755)?;
    }
    Ok(())
}

/// One flag of a `--help` text.
#[derive(Debug, PartialEq)]
pub struct Flag {
    /// `--name`.
    pub name: String,
    /// The value's placeholder, `None` for a switch.
    pub value: Option<String>,
    pub help: String,
    pub default: Option<String>,
    pub possible: Option<String>,
}

/// The flags of clap's long help (`--help`): an option line (`  -x, --name
/// <VALUE>` or `      --name <VALUE>`), then its description indented
/// further, ending in `[default: …]`, `[possible values: …]` and `[env: …]`
/// tags. `--help` and `--version` are left out.
pub fn parse_help(text: &str) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && (2..=6).contains(&indent) {
            let mut words = trimmed.split_whitespace();
            let Some(name) = words.find(|w| w.starts_with("--")) else {
                continue;
            };
            let name = name.trim_end_matches(',').to_string();
            let value = words
                .next()
                .filter(|w| w.starts_with('<'))
                .map(|w| w.trim_matches(|c| c == '<' || c == '>').to_string());
            // A short help sits on the flag's own line after two spaces.
            let help = trimmed
                .split_once("  ")
                .map(|(_, h)| h.trim().to_string())
                .unwrap_or_default();
            flags.push(Flag {
                name,
                value,
                help,
                default: None,
                possible: None,
            });
        } else if indent > 6 && !trimmed.is_empty() {
            if let Some(flag) = flags.last_mut() {
                if !flag.help.is_empty() {
                    flag.help.push(' ');
                }
                flag.help.push_str(trimmed);
            }
        }
    }
    flags.retain(|f| f.name != "--help" && f.name != "--version");
    for flag in &mut flags {
        // Tags are bracketed at the end: take them off from the right.
        while flag.help.ends_with(']') {
            let Some(start) = flag
                .help
                .rfind(" [")
                .or_else(|| flag.help.starts_with('[').then_some(0))
            else {
                break;
            };
            let tag = flag.help[start..]
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if let Some(v) = tag.strip_prefix("default: ") {
                flag.default = Some(v.to_string());
            } else if let Some(v) = tag.strip_prefix("possible values: ") {
                flag.possible = Some(v.to_string());
            } else if !tag.starts_with("env: ") {
                break;
            }
            flag.help.truncate(start);
        }
    }
    flags
}

/// The environment file of `daemon`: every flag with its default and help
/// as comments, then the variable the unit passes (empty; install.sh sets
/// it for the machine).
fn env_file(daemon: &Daemon, flags: &[Flag]) -> String {
    let unit = format!("kestrel-{}", daemon.name);
    let command = daemon.command.join(" ");
    let var = daemon.var;
    let mut out = wrap(
        &format!(
            "/etc/kestrel/{}.env: configuration of {unit}.service (`{command}`).",
            daemon.name
        ),
        "# ",
        "# ",
    );
    out.push_str("#\n");
    out.push_str(&wrap(
        &format!(
            "{var} at the end holds the flags the unit passes, each at most once. \
             Every flag of `{command}` is listed below with its default; to change \
             one, add it to {var}, then `systemctl restart {unit}`. install.sh sets \
             {var} when it makes this file and keeps a file that exists."
        ),
        "# ",
        "# ",
    ));
    out.push_str("#\n");
    for flag in flags {
        let mut head = flag.name.clone();
        let by_unit = daemon.by_unit.iter().find(|(n, _)| *n == flag.name);
        if let Some(value) = &flag.value {
            match (&flag.default, by_unit) {
                (_, Some((_, how))) => head.push_str(&format!("={value}: {how}")),
                (Some(d), None) if d == "\"\"" => head.push_str("= (empty)"),
                (Some(d), None) => head.push_str(&format!("={d}")),
                (None, None) => head.push_str(&format!("={value} (not set)")),
            }
        }
        out.push_str(&wrap(&head, "#   ", "#       "));
        let mut help = flag.help.clone();
        if let Some(p) = &flag.possible {
            help.push_str(&format!(" (one of: {p})"));
        }
        if !help.is_empty() {
            out.push_str(&wrap(&help, "#       ", "#       "));
        }
    }
    out.push_str(&format!("#\n{}=\"\"\n", daemon.var));
    out
}

/// `text` wrapped to 78 columns, the first line after `first`, the others
/// after `rest`.
fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > 78 {
            out.push_str(line.trim_end());
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "\
Usage: control-plane scheduler [OPTIONS]

Options:
      --kubeconfig <KUBECONFIG>
          kubeconfig with the API server's address [env: KUBECONFIG=]
      --leader-elect <LEADER_ELECT>
          Run only while holding the Lease [default: true] [possible values: true, false]
      --no-tls
          Serve no HTTPS at all
      --kube-reserved <KUBE_RESERVED>
          Resources kept for the agent itself, same form [default: \"\"]
  -h, --help
          Print help
";

    #[test]
    fn help_flags_with_defaults_and_tags() {
        let flags = parse_help(HELP);
        let names: Vec<&str> = flags.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "--kubeconfig",
                "--leader-elect",
                "--no-tls",
                "--kube-reserved"
            ]
        );
        assert_eq!(flags[0].help, "kubeconfig with the API server's address");
        assert_eq!(flags[0].default, None);
        assert_eq!(flags[1].default.as_deref(), Some("true"));
        assert_eq!(flags[1].possible.as_deref(), Some("true, false"));
        assert_eq!(flags[1].help, "Run only while holding the Lease");
        assert_eq!(flags[2].value, None);
        assert_eq!(flags[3].default.as_deref(), Some("\"\""));
    }

    #[test]
    fn env_file_lists_every_flag_and_ends_with_the_variable() {
        let flags = parse_help(HELP);
        let text = env_file(&DAEMONS[1], &flags);
        assert!(text.contains("#   --leader-elect=true\n"), "{text}");
        assert!(text.contains("#   --kube-reserved= (empty)\n"), "{text}");
        assert!(text.contains("#   --no-tls\n"), "{text}");
        assert!(
            text.contains("#   --kubeconfig=KUBECONFIG: set by the unit"),
            "{text}"
        );
        assert!(text.ends_with("\nSCHEDULER_ARGS=\"\"\n"), "{text}");
        assert!(
            text.lines().all(|l| l.len() <= 78 || !l.contains(' ')),
            "{text}"
        );
    }
}
