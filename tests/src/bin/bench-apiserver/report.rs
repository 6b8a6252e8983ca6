//! The Markdown table and the notes under it.

use crate::measure::{ms, Row};
use crate::run::Report;
use crate::Args;

pub(crate) fn render(a: &Args, report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| operation | concurrency | count | ops/s | p50 ms | p90 ms | p99 ms | errors |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |\n",
            r.op,
            r.concurrency,
            r.lat.len(),
            r.ops_per_sec(),
            ms(r.pct(50.0)),
            ms(r.pct(90.0)),
            ms(r.pct(99.0)),
            r.errors
        ));
    }
    out.push('\n');
    let find = |prefix: &str, open: bool| {
        report
            .rows
            .iter()
            .find(|r| r.op.starts_with(prefix) && r.concurrency.starts_with("open") == open)
    };
    let ratio = |x: Option<&Row>, y: Option<&Row>, p: f64| match (
        x.and_then(|r| r.pct(p)),
        y.and_then(|r| r.pct(p)),
    ) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}×", x / y),
        _ => "–".into(),
    };
    let (etcd_c, api_c) = (find("etcd put", false), find("apiserver create", false));
    out.push_str(&format!(
        "Ratios, apiserver create ÷ etcd put at {} clients: p50 {}, p99 {}.\n",
        a.concurrency,
        ratio(api_c, etcd_c, 50.0),
        ratio(api_c, etcd_c, 99.0)
    ));
    let (etcd_o, api_o) = (find("etcd put", true), find("apiserver create", true));
    out.push_str(&format!(
        "Ratios, apiserver create ÷ etcd put, open loop at {}/s: p50 {}, p99 {}.\n",
        a.rate,
        ratio(api_o, etcd_o, 50.0),
        ratio(api_o, etcd_o, 99.0)
    ));
    let gt_o = find("etcd get + txn", true);
    out.push_str(&format!(
        "Ratios, apiserver create ÷ etcd get + txn (its own etcd calls), open loop at {}/s: p50 {}, p99 {}.\n",
        a.rate,
        ratio(api_o, gt_o, 50.0),
        ratio(api_o, gt_o, 99.0)
    ));
    for n in &report.notes {
        out.push_str(&format!("\n{n}\n"));
    }
    out.push_str(
        "\nCPU per operation (µs) while each phase ran, the cores the three processes kept \
         busy, and the share of time some task on the machine waited for a CPU \
         (/proc/pressure/cpu):\n\n",
    );
    out.push_str(
        "| operation | concurrency | etcd | apiserver | bench client | cores busy | CPU wait % |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for r in &report.rows {
        let Some(cpu) = r.cpu else { continue };
        let n = r.lat.len().max(1) as f64;
        let per = |s: f64| format!("{:.0}", s * 1e6 / n);
        let cores = |s: f64| {
            if cpu.wall > 0.0 {
                format!("{:.2}", s / cpu.wall)
            } else {
                "–".into()
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.op,
            r.concurrency,
            per(cpu.etcd),
            per(cpu.apiserver),
            per(cpu.bench),
            cores(cpu.etcd + cpu.apiserver + cpu.bench),
            if cpu.wall > 0.0 {
                format!("{:.0}", 100.0 * cpu.stalled / cpu.wall)
            } else {
                "–".into()
            }
        ));
    }
    out.push_str(&format!(
        "\nClosed-loop phases ran {} s each, open-loop runs {} s; {} CPUs; everything on 127.0.0.1.\n",
        a.duration,
        a.rate_duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    out
}
