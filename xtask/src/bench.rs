//! `cargo xtask bench`: the benchmark driver (`tests/src/bin/bench/`) and the fuzz targets.

use super::*;

pub(crate) fn bench(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and start sshd; run `cargo xtask bench` as root");
    }
    setup(Needs::Bench)?;
    let bin = build()?;
    let root = workspace_root();
    let fuzz_results = root.join("target/release/fuzz-results.txt");
    fuzz(if quick { 10 } else { 60 }, &fuzz_results)?;
    let mut cmd = Command::new(root.join("target/release/bench"));
    cmd.arg("--out").arg(root.join("BENCHMARKS.md")).arg("--fuzz").arg(&fuzz_results).env("NOTIFIER_BIN", &bin);
    if quick {
        cmd.arg("--quick");
    }
    check(&mut cmd)
}

/// The cargo-fuzz targets in fuzz/.
pub(crate) const FUZZ_TARGETS: &[&str] = &["decode", "authinfo", "config"];

/// Runs each fuzz target for `seconds`; writes `name runs seconds outcome` lines to `results`.
/// A crash fails the command, after all targets ran, with the artifact's path.
pub(crate) fn fuzz(seconds: u64, results: &Path) -> Result<()> {
    if !succeeds(cargo().args(["fuzz", "--version"])) {
        println!("setup: installing cargo-fuzz (a few minutes)");
        check(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let mut lines = String::new();
    let mut crashed = Vec::new();
    for target in FUZZ_TARGETS {
        println!("bench: fuzzing {target} for {seconds} s");
        let out = Command::new("rustup")
            .current_dir(workspace_root().join("fuzz"))
            .args(["run", "nightly", "cargo", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let outcome = if out.status.success() {
            "no crash".to_string()
        } else {
            crashed.push(*target);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            format!("CRASH (see fuzz/artifacts/{target}/)")
        };
        lines.push_str(&format!("{target} {runs} {seconds} {outcome}\n"));
    }
    std::fs::write(results, lines)?;
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}; the inputs are in fuzz/artifacts/", crashed.join(", "));
    }
    Ok(())
}
