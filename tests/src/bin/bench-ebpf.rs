//! `bench-ebpf`: what the agent's TC programs cost per packet, decision by
//! decision, measured in the kernel with `BPF_PROG_TEST_RUN`.
//!
//! It loads the agent's eBPF object in a network namespace of its own (the
//! bench the `ebpf_datapath` tests use: a node, a pod, another pod, a route
//! to another node's pods, and one to a third node's pods through a VXLAN
//! tunnel, which only the tunnel cases see), runs each program on a crafted frame, and
//! reports the kernel's time per run. Every run gets the frame afresh (one
//! `BPF_PROG_TEST_RUN` call each): with the kernel's own repeat count the
//! program would see the frame it rewrote the time before, and a routed
//! frame's TTL would run out after 63 runs. The
//! baseline, run in the same rounds, is `count_packets`: a program that
//! only adds to a per-CPU counter, so what is left over is the decision
//! itself (parsing, map lookups, FIB lookup, rewrites). Each case checks the
//! verdict first, so a case that took another branch fails instead of
//! timing the wrong thing. Flows that keep state (masquerade, node ports)
//! are timed once established: the first run creates their conntrack
//! entries, the rest find them.
//!
//! `cargo xtask bench ebpf [-- OPTIONS]` builds and runs it; it needs root.
//! It writes `target/bench/ebpf.md`.

use std::time::Duration;

use anyhow::{ensure, Result};
use clap::Parser;

use harness::datapath::{
    frame, Bench, CLIENT, NODE, NODE_PORT, OTHER_POD, OUTSIDE, POD, REMOTE_POD, TCP, TC_ACT_OK,
    TC_ACT_REDIRECT, TUNNEL_NODE, TUNNEL_POD, TUNNEL_PORT, UDP,
};
use harness::netbench::median;
use kestrel_agent::ebpf::abi::{self, Tunnel};

#[derive(Parser, Debug)]
#[command(
    name = "bench-ebpf",
    about = "Time the agent's TC programs per packet with BPF_PROG_TEST_RUN, against a counter-only program"
)]
struct Args {
    /// Runs of each program per round, each on a fresh copy of its frame.
    #[arg(long, default_value_t = 100_000)]
    runs: u32,
    /// Rounds; the table shows the median and the range.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// TC_ACT_UNSPEC, what the counter returns, as the kernel hands it back.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// One timed decision: its name, the program, the frame and the verdict
/// it must reach.
struct Case {
    title: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    /// Timed with the node's VXLAN tunnel written for the programs
    /// (`--tunnel vxlan`); the others without, as with native routing.
    tunnel: bool,
}

fn cases() -> Vec<Case> {
    let case = |title, program, frame, verdict| Case {
        title,
        program,
        frame,
        verdict,
        tunnel: false,
    };
    let tunnel = |title, program, frame, verdict| Case {
        tunnel: true,
        ..case(title, program, frame, verdict)
    };
    vec![
        case(
            "count_packets: a per-CPU counter only (the baseline)",
            abi::COUNT_PROGRAM,
            frame(TCP, (POD, 40000), (OTHER_POD, 80)),
            TC_ACT_UNSPEC,
        ),
        case(
            "from_pod: to a pod on the same node",
            abi::FROM_POD_PROGRAM,
            frame(TCP, (POD, 40000), (OTHER_POD, 80)),
            TC_ACT_REDIRECT,
        ),
        case(
            "from_pod: to a pod on another node (FIB lookup)",
            abi::FROM_POD_PROGRAM,
            frame(TCP, (POD, 40000), (REMOTE_POD, 80)),
            TC_ACT_REDIRECT,
        ),
        tunnel(
            "from_pod: to a pod on another node over VXLAN (two FIB lookups, encapsulation)",
            abi::FROM_POD_PROGRAM,
            frame(TCP, (POD, 40000), (TUNNEL_POD, 80)),
            TC_ACT_REDIRECT,
        ),
        case(
            "from_pod: to the node itself (left to the stack)",
            abi::FROM_POD_PROGRAM,
            frame(TCP, (POD, 40000), (NODE, 10250)),
            TC_ACT_OK,
        ),
        case(
            "from_pod: out of the cluster, masqueraded (established flow)",
            abi::FROM_POD_PROGRAM,
            frame(UDP, (POD, 40000), (OUTSIDE, 53)),
            TC_ACT_REDIRECT,
        ),
        case(
            "from_uplink: to a pod of this node",
            abi::FROM_UPLINK_PROGRAM,
            frame(TCP, (REMOTE_POD, 40000), (OTHER_POD, 80)),
            TC_ACT_REDIRECT,
        ),
        tunnel(
            "from_uplink: a VXLAN packet for the node (left to the tunnel device)",
            abi::FROM_UPLINK_PROGRAM,
            frame(UDP, (TUNNEL_NODE, 40000), (NODE, TUNNEL_PORT)),
            TC_ACT_OK,
        ),
        case(
            "from_uplink: node port to a local backend (established flow)",
            abi::FROM_UPLINK_PROGRAM,
            frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
            TC_ACT_REDIRECT,
        ),
    ]
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn main_inner(a: Args) -> Result<()> {
    harness::require_root("it loads eBPF programs in a network namespace of its own");
    ensure!(
        (1_000..=10_000_000).contains(&a.runs),
        "--runs must be 1,000 to 10,000,000"
    );
    ensure!((1..=20).contains(&a.rounds), "--rounds must be 1 to 20");
    let mut bench = Bench::new();
    bench.node_port(OTHER_POD, 8080);
    let (tunnel, _) = bench.tunnel();
    let cases = cases();
    // samples[case]: one mean per round.
    let mut samples: Vec<Vec<f64>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 1..=a.rounds {
        // Cases interleave, so a burst of other load spreads over all of them.
        for (c, case) in cases.iter().enumerate() {
            bench.set_tunnel(if case.tunnel {
                tunnel
            } else {
                Tunnel::default()
            });
            let (verdicts, per_run) = bench.time(case.program, &case.frame, a.runs);
            ensure!(
                verdicts == [(case.verdict, a.runs)],
                "{}: verdicts (verdict, runs) {verdicts:?}, expected {} every time",
                case.title,
                case.verdict
            );
            let per_run = ns(per_run);
            eprintln!(
                "  round {round}/{}: {}: {per_run:.0} ns",
                a.rounds, case.title
            );
            samples[c].push(per_run);
        }
    }
    let base = median(&samples[0]);
    let mut out = String::from("# eBPF programs: time per packet\n\n");
    out.push_str(&format!(
        "`BPF_PROG_TEST_RUN`, {} runs per round, each on a fresh copy of its frame, as the \
         kernel timed them; medians of {} rounds (lowest–highest in brackets). The baseline is \
         `count_packets`, which only adds to a per-CPU counter: what a run costs with no \
         decision in it, the kernel's timing included. \"Over the baseline\" is the decision's \
         own time.\n\n",
        a.runs, a.rounds
    ));
    out.push_str("| decision | ns per packet | over the baseline, ns | ÷ baseline |\n");
    out.push_str("|---|---:|---:|---:|\n");
    for (case, v) in cases.iter().zip(&samples) {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let m = median(v);
        out.push_str(&format!(
            "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {:.0} | {:.2} |\n",
            case.title,
            m - base,
            m / base
        ));
    }
    out.push_str("\n| program | instructions after the verifier |\n|---|---:|\n");
    for p in [
        abi::COUNT_PROGRAM,
        abi::FROM_POD_PROGRAM,
        abi::FROM_UPLINK_PROGRAM,
    ] {
        let n = bench
            .instructions(p)
            .map_or("–".to_string(), |n| n.to_string());
        out.push_str(&format!("| {p} | {n} |\n"));
    }
    print!("{out}");
    let dir = harness::benchkit::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ebpf.md"), &out)?;
    eprintln!("written to {}", dir.join("ebpf.md").display());
    Ok(())
}

fn main() {
    let a = Args::parse();
    if let Err(e) = main_inner(a) {
        eprintln!("bench-ebpf: {e:#}");
        std::process::exit(1);
    }
}
