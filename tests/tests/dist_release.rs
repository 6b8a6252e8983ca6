//! `cargo xtask dist` lays out a release (binaries, systemd units,
//! configuration that documents every flag, `install.sh`), install.sh is
//! portable shell, a dry run changes nothing, and the Vagrantfile that
//! installs the release is valid.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use harness::dist::*;

#[test]
fn a_release_holds_binaries_units_documented_configuration_and_the_installer() {
    let dir = release();
    let files = files_under(&dir);
    let mut expected: BTreeSet<String> = ["install.sh", "README.md", "VERSION"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    expected.extend(BINARIES.iter().map(|b| format!("bin/{b}")));
    expected.extend(UNITS.iter().map(|u| format!("systemd/{u}.service")));
    expected.extend(
        [
            "etcd",
            "apiserver",
            "scheduler",
            "controller-manager",
            "agent",
        ]
        .iter()
        .map(|c| format!("config/{c}.env")),
    );
    expected.insert("config/etcd-member.env".into());
    expected.insert("systemd/kestrel-etcd.service.d/member.conf".into());
    assert_eq!(files, expected);
    assert_eq!(mode(&dir.join("install.sh")), 0o755);
    for b in BINARIES {
        assert_eq!(mode(&dir.join("bin").join(b)), 0o755, "{b}");
    }
    for b in ["control-plane", "agent"] {
        let out = Command::new(dir.join("bin").join(b))
            .arg("--version")
            .output()
            .expect("run the packaged binary");
        assert!(out.status.success(), "bin/{b} --version: {}", stderr(&out));
    }

    // The tarball holds the same files under the release's name.
    let tarball = dist_out().join(format!("{}.tar.gz", release_name()));
    let out = Command::new("tar")
        .arg("-tzvf")
        .arg(&tarball)
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    let in_tar: BTreeSet<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.strip_prefix(&format!("{}/", release_name())))
        .map(str::to_string)
        .collect();
    assert_eq!(in_tar, expected);
    assert!(
        listing.lines().all(|l| l.contains(" 0/0 ")),
        "files in the tarball are owned by root: {listing}"
    );

    // Every flag of every daemon is documented in its environment file, and
    // the variable the unit expands is there, empty until install.sh sets it.
    for (name, var, command) in DAEMONS {
        let file = dir.join("config").join(format!("{name}.env"));
        let text = std::fs::read_to_string(&file).expect("env file");
        for flag in help_flags(command) {
            assert!(
                text.contains(&format!("#   {flag}")),
                "{name}.env does not document {flag}:\n{text}"
            );
        }
        assert!(text.ends_with(&format!("\n{var}=\"\"\n")), "{text}");
        let unit = std::fs::read_to_string(dir.join(format!("systemd/kestrel-{name}.service")))
            .expect("unit");
        assert!(
            unit.contains(&format!("EnvironmentFile=/etc/kestrel/{name}.env")),
            "{unit}"
        );
        assert!(
            unit.contains(&format!(
                "ExecStart=/usr/local/bin/{} ${var}",
                command.join(" ")
            )),
            "{unit}"
        );
    }
}

#[test]
fn install_sh_is_posix_sh_that_shellcheck_accepts() {
    let script = release().join("install.sh");
    let out = Command::new("sh")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .arg(&script)
        .output()
        .expect("shellcheck is missing: `cargo xtask setup` installs it");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path().to_str().expect("utf-8 path");
    let out = install(&[
        "--root",
        r,
        "--dry-run",
        "control-plane",
        "--advertise-address",
        "192.0.2.10",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    for line in [
        "would install: /usr/local/bin/control-plane",
        "would install: /etc/systemd/system/kestrel-apiserver.service",
        "would install: /etc/kestrel/apiserver.env",
        "would run: systemctl enable kestrel-etcd kestrel-apiserver",
        "would run: systemctl enable kestrel-scheduler kestrel-controller-manager",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(files_under(root.path()).is_empty(), "a dry run wrote files");
    // DESTDIR is the same as --root.
    let out = Command::new(release().join("install.sh"))
        .args([
            "--dry-run",
            "control-plane",
            "--advertise-address",
            "192.0.2.10",
        ])
        .env("DESTDIR", root.path())
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("would install: /usr/local/bin/control-plane"));
    assert!(files_under(root.path()).is_empty(), "a dry run wrote files");

    // Bad input is refused before anything happens.
    let out = install(&["--root", r, "control-plane", "--advertise-address", "x;y"]);
    assert!(!out.status.success());
    let out = install(&["--root", r, "add-node", "Bad_Name"]);
    assert!(!out.status.success());
    assert!(files_under(root.path()).is_empty());
}

#[test]
fn the_vagrantfile_is_valid() {
    // A copy, so what the Vagrantfile stages when read (`.kestrel/`) stays
    // out of the checkout.
    let dir = tempfile::tempdir().expect("tempdir");
    let vagrantfile = dir.path().join("Vagrantfile");
    std::fs::copy(
        harness::workspace_root().join("vagrant/Vagrantfile"),
        &vagrantfile,
    )
    .expect("copy the Vagrantfile");
    let out = Command::new("ruby")
        .arg("-c")
        .arg(&vagrantfile)
        .output()
        .expect("ruby is missing: `cargo xtask setup` installs vagrant, which brings it");
    assert!(out.status.success(), "{}", stderr(&out));
    // Vagrant reads the file for real: machine definitions, provisioners
    // (whose upload sources must exist), triggers, and the libvirt
    // provider's settings; no box is needed.
    let home = tempfile::tempdir().expect("tempdir");
    let validate = |control_planes: &str| -> Output {
        Command::new("vagrant")
            .arg("validate")
            .current_dir(dir.path())
            .env("VAGRANT_HOME", home.path())
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("KESTREL_CONTROL_PLANES", control_planes)
            .output()
            .expect("vagrant is missing: `cargo xtask setup` installs it")
    };
    // One control plane, and three (cp, cp-2 and cp-3 with --peers).
    for n in ["1", "3"] {
        let out = validate(n);
        assert!(
            out.status.success() && stdout(&out).contains("validated successfully"),
            "vagrant validate with {n} control planes: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let out = validate("2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must be 1, 3, 5 or 7"),
        "{}",
        stderr(&out)
    );
}
