//! `cargo xtask bench`: measures notifier, and the alternatives, on this machine in one run, prints
//! a table and rewrites BENCHMARKS.md. These are figures, not pass/fail tests. Every case runs
//! several times and reports the median and the spread.
//!
//! Cases: SSH login overhead (no tracer, `notifier run`, the pam_exec recipe, bpftrace), probe cost
//! per PAM session, event latency, throughput and loss, footprint (RSS, idle CPU and wake-ups,
//! start-up, against bpftrace's start-up), stopping and restarting, and alert latency to a local
//! webhook.

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
mod fleet;
mod footprint;
mod hostile;
mod lifecycle;
mod logins;
mod memory;
mod report;
mod stats;
mod tracers;

use capture::*;
use fleet::*;
use footprint::*;
use hostile::*;
use lifecycle::*;
use logins::*;
use memory::*;
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
    /// Only these cases (probe, witness, login, latency, throughput, footprint, memory, stop, hostile, alert, fleet); the table
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
    // Each case says when it starts and how long it took, on stderr, so that a run of many
    // minutes is never silent; the table rows stay on stdout.
    let mut case = |name: &str, run: &mut dyn FnMut(&mut Report)| {
        if !wanted(name) {
            return;
        }
        eprintln!("bench: {name}: starting");
        let started = std::time::Instant::now();
        run(&mut report);
        eprintln!("bench: {name}: done in {:.1} s", started.elapsed().as_secs_f64());
    };
    case("probe", &mut |r| probe_cost(r, if q { 3 } else { 7 }));
    case("witness", &mut |r| witness_cost(r, if q { 3 } else { 7 }));
    case("login", &mut |r| {
        login_overhead(r, if q { 5 } else { 12 });
        concurrent_logins(r, 8, if q { 5 } else { 20 }, if q { 1 } else { 3 });
    });
    case("latency", &mut |r| event_latency(r, if q { 1000 } else { 4000 }));
    case("throughput", &mut |r| throughput(r, if q { 10_000 } else { 30_000 }, if q { 1 } else { 3 }));
    case("footprint", &mut |r| {
        footprint(
            r,
            if q { 3 } else { 7 },
            Duration::from_secs(if q { 5 } else { 20 }),
            if q { 20_000 } else { 100_000 },
        )
    });
    case("memory", &mut |r| memory(r, if q { 3 } else { 7 }));
    case("stop", &mut |r| stop_and_restart(r, if q { 3 } else { 7 }));
    case("hostile", &mut |r| hostile_load(r, if q { 6 } else { 10 }, if q { 100 } else { 300 }));
    case("alert", &mut |r| alert_latency(r, if q { 50 } else { 200 }));
    case("fleet", &mut |r| fleet(r, if q { 100 } else { 400 }));
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
