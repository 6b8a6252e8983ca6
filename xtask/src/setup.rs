//! `cargo xtask setup`: everything the project needs, installed once.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, succeeds};

/// kubectl minor version the project's API server reports and tests drive.
pub const KUBECTL_MINOR: u32 = 32;

/// Path of the version-pinned kubectl.
pub fn kubectl_path() -> String {
    format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{KUBECTL_MINOR}")
}

/// Debian packages the project and its tests use.
pub const PACKAGES: &[&str] = &[
    "etcd-server",                 // the API server's store
    "etcd-client",                 // etcdctl, for health checks and tests
    "libseccomp-dev",              // libcontainer's seccomp support
    "pkg-config",                  // finds libseccomp at build time
    "protobuf-compiler",           // etcd's gRPC API is generated at build time
    "libprotobuf-dev",             // the well-known .proto files etcd's API imports
    "iproute2",                    // ip/tc in tests and clusters
    "iputils-ping",                // connectivity checks in tests
    "curl",                        // raw HTTPS checks in tests
    "busybox-static",              // the busybox image tests run
    "iperf3",                      // throughput benchmarks
    "docker-registry",             // an OCI registry on loopback for image pulls
    "containernetworking-plugins", // the reference bridge CNI, a benchmark baseline
    "iptables", // kube-proxy's iptables rules, a benchmark baseline; iptables-save in tests
    "nftables", // kube-proxy's nftables rules, likewise; nft list ruleset in tests
    "ipset",    // kube-router's sets, the baseline of `bench policy`
    "python3-venv", // the venv the python-client tests run in
    "fonts-dejavu-core", // the text of `bench net`'s chart
    "shellcheck", // lints install.sh in the dist tests
    "openssl",  // install.sh join checks certificates with it
    "systemd",  // systemd-analyze verifies the dist's units
    "vagrant",  // `vagrant validate` of vagrant/Vagrantfile
    "vagrant-libvirt", // the provider that validate checks against
    "systemd-container", // systemd-nspawn: machines install.sh provisions for real
    "debootstrap", // the Debian root file system of those machines
];

const NIGHTLY: &str = "nightly";

/// The python `kubernetes` client the python-client tests drive.
pub const PYTHON_KUBERNETES: &str = "kubernetes==37.0.2";

/// Checks everything and installs what is missing unless `check_only`.
pub fn run(check_only: bool) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();

    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if !missing.is_empty() {
        if check_only || !util::is_root() {
            problems.push(format!(
                "Debian packages missing: {} (fix: run `cargo xtask setup` as root, or `apt-get install {}`)",
                missing.join(" "),
                missing.join(" ")
            ));
        } else {
            util::step(&format!(
                "installing Debian packages: {}",
                missing.join(" ")
            ));
            apt_install(&missing)?;
        }
    }

    if !succeeds(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        problems.push(format!(
            "the Rust `{NIGHTLY}` toolchain is missing (fix: `rustup toolchain install {NIGHTLY}`)"
        ));
    } else {
        if !rust_src_installed() {
            if check_only {
                problems.push(format!(
                    "rust-src for {NIGHTLY} is missing (fix: `rustup component add rust-src --toolchain {NIGHTLY}`)"
                ));
            } else {
                util::step("adding rust-src to the nightly toolchain");
                util::run(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    NIGHTLY,
                ]))?;
            }
        }
        if !succeeds(Command::new("bpf-linker").arg("--version")) {
            if check_only {
                problems.push("bpf-linker is missing (fix: `cargo xtask setup`)".into());
            } else if let Err(e) = install_bpf_linker() {
                problems.push(format!("bpf-linker could not be installed: {e:#}"));
            }
        }
    }

    if !python_client_installed() {
        if check_only {
            problems.push(format!(
                "the python client ({PYTHON_KUBERNETES}) is missing from {} (fix: `cargo xtask setup`)",
                python_venv().display()
            ));
        } else if let Err(e) = install_python_client() {
            problems.push(format!("the python client could not be installed: {e:#}"));
        }
    }

    if !std::path::Path::new(&kubectl_path()).exists() {
        problems.push(format!(
            "{} is missing: the tests drive the real kubectl at that version",
            kubectl_path()
        ));
    }

    if problems.is_empty() {
        eprintln!("setup: everything the project needs is installed");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("setup: {p}");
        }
        anyhow::bail!("{} set-up problem(s), listed above", problems.len())
    }
}

fn deb_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs),
    )
}

/// The virtual environment holding the python `kubernetes` client
/// (`tests/tests/python_client.rs` runs its `bin/python`).
fn python_venv() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/kestrel/python")
}

fn python_client_installed() -> bool {
    succeeds(Command::new(python_venv().join("bin/python")).args(["-c", "import kubernetes"]))
}

/// Creates the venv with Debian's python3 (python3-venv) unless its python
/// runs, then installs the pinned client into it.
fn install_python_client() -> anyhow::Result<()> {
    let venv = python_venv();
    if !succeeds(Command::new(venv.join("bin/python")).arg("--version")) {
        util::step(&format!("creating a python venv at {}", venv.display()));
        util::run(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )?;
    }
    util::step(&format!(
        "installing {PYTHON_KUBERNETES} into {}",
        venv.display()
    ));
    util::run(Command::new(venv.join("bin/python")).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        PYTHON_KUBERNETES,
    ]))
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM, so the
/// LLVM that links BPF objects is the one rustc emitted bitcode for.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot = String::from_utf8(
        Command::new("rustup")
            .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
            .output()?
            .stdout,
    )?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow::anyhow!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    // bpf-linker keeps a runpath to this prefix, so it must stay where it is.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = PathBuf::from(home).join(".cache/kestrel/llvm-nightly");
    std::fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = prefix.join("lib").join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    util::step(&format!(
        "building bpf-linker against nightly's LLVM {major} (a few minutes)"
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    util::run(
        Command::new(cargo)
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--locked",
                "--no-default-features",
            ])
            .arg("--features")
            .arg(format!("llvm-{major}")),
    )
}
