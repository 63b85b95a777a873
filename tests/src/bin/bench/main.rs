//! `cargo xtask bench`: measures notifier, and the alternatives, on this machine in one run, prints
//! a table and rewrites BENCHMARKS.md. These are figures, not pass/fail tests. Every case runs
//! several times and reports the median and the spread.
//!
//! Cases: SSH login overhead (no tracer, `notifier run`, the pam_exec recipe, bpftrace), probe cost
//! per PAM session, event latency, throughput and loss, footprint (RSS, idle CPU and wake-ups,
//! start-up, against bpftrace's start-up), and alert latency to a local webhook.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use notifier_tests::*;

mod capture;
mod footprint;
mod hostile;
mod logins;
mod report;
mod stats;
mod tracers;

use capture::*;
use footprint::*;
use hostile::*;
use logins::*;
use report::*;
use stats::*;
use tracers::*;

#[derive(Parser)]
struct Args {
    /// The BENCHMARKS.md to rewrite.
    #[arg(long)]
    out: PathBuf,
    /// Fewer repetitions, for a quick look (the figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Results of the fuzz targets that `cargo xtask bench` ran: `name runs seconds outcome`.
    #[arg(long)]
    fuzz: Option<PathBuf>,
    /// Only these cases (probe, witness, login, latency, throughput, footprint, hostile, alert); the table
    /// is printed and BENCHMARKS.md is left alone.
    #[arg(long, value_name = "CASE")]
    only: Vec<String>,
}

fn main() {
    let args = Args::parse();
    if !kernel_tests_enabled() {
        eprintln!("bench: needs root (eBPF)");
        std::process::exit(2);
    }
    let q = args.quick;
    let mut report = Report { per_hit_ns: f64::NAN, rows: Vec::new(), notes: Vec::new() };
    println!("{:<18} {:<44} {:<34} {:<16} result", "case", "what", "figure", "target");
    let wanted = |case: &str| args.only.is_empty() || args.only.iter().any(|c| c == case);
    if wanted("probe") {
        probe_cost(&mut report, if q { 3 } else { 7 });
    }
    if wanted("witness") {
        witness_cost(&mut report, if q { 3 } else { 7 });
    }
    if wanted("login") {
        login_overhead(&mut report, if q { 5 } else { 12 });
        concurrent_logins(&mut report, 8, if q { 5 } else { 20 }, if q { 1 } else { 3 });
    }
    if wanted("latency") {
        event_latency(&mut report, if q { 1000 } else { 4000 });
    }
    if wanted("throughput") {
        throughput(&mut report, if q { 10_000 } else { 30_000 }, if q { 1 } else { 3 });
    }
    if wanted("footprint") {
        footprint(
            &mut report,
            if q { 3 } else { 7 },
            Duration::from_secs(if q { 5 } else { 20 }),
            if q { 20_000 } else { 100_000 },
        );
    }
    if wanted("hostile") {
        hostile_load(&mut report, if q { 6 } else { 10 }, if q { 100 } else { 300 });
    }
    if wanted("alert") {
        alert_latency(&mut report, if q { 50 } else { 200 });
    }
    if !args.only.is_empty() {
        println!("bench: --only given; {} left alone", args.out.display());
        return;
    }
    if let Some(path) = &args.fuzz {
        fuzz_rows(&mut report, path);
    }
    write_markdown(&args.out, &report, q);
    println!("bench: wrote {}", args.out.display());
}
