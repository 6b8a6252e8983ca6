//! `cargo xtask fuzz`: runs the libFuzzer targets of fuzz/ with cargo-fuzz
//! and nightly, each for a bounded time, growing fuzz/corpus/<target>.

use std::path::Path;
use std::process::Command;

use crate::util;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// One target (a file name in fuzz/fuzz_targets without `.rs`); all of
    /// them when left out.
    target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    let root = util::root();
    let all = targets(&root.join("fuzz/fuzz_targets"))?;
    let chosen = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => anyhow::bail!("no fuzz target {t:?}; there are: {}", all.join(", ")),
        None => all,
    };
    ensure_cargo_fuzz()?;
    let mut crashed = Vec::new();
    for target in &chosen {
        util::step(&format!(
            "fuzzing {target} for {} s (nightly, AddressSanitizer; corpus fuzz/corpus/{target})",
            args.seconds
        ));
        // Each target's feature pulls in only the crates it exercises.
        let mut cmd = cargo_fuzz(&root, &["run", target, "--features", target]);
        cmd.arg("--")
            .arg(format!("-max_total_time={}", args.seconds));
        if let Err(e) = util::run(&mut cmd) {
            eprintln!("{target}: {e}");
            crashed.push(target.clone());
        }
    }
    anyhow::ensure!(
        crashed.is_empty(),
        "crashes in {}; the inputs are in fuzz/artifacts/<target>/. Fix the \
         parser, then copy the input into fuzz/corpus/<target>/ so \
         `cargo test -p kestrel-fuzz-checks` replays it",
        crashed.join(", ")
    );
    Ok(())
}

fn targets(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// `cargo fuzz` under nightly, building into target/fuzz so the sanitized
/// build never mixes with the stable one.
fn cargo_fuzz(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .arg("--target-dir")
        .arg(root.join("target/fuzz"))
        .current_dir(root);
    // Settings of the stable cargo that runs xtask must not reach nightly.
    for var in ["RUSTC", "RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let found = util::succeeds(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "fuzz",
        "--version",
    ]));
    if found {
        return Ok(());
    }
    util::step("cargo-fuzz is missing: installing it with `cargo install cargo-fuzz --locked` (a few minutes, once)");
    util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}
