//! The table of results, the machine it ran on, and BENCHMARKS.md.

use super::*;

pub(crate) fn fuzz_rows(report: &mut Report, path: &Path) {
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(name), Some(runs), Some(secs), Some(outcome)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let runs: u64 = runs.parse().unwrap_or(0);
        report.row(
            "fuzz",
            format!("cargo fuzz run {name} ({secs} s)"),
            format!("{runs} inputs, {outcome}"),
            "no crash",
            met(outcome == "no crash"),
        );
    }
}

/// One line of the table.
pub(crate) struct Row {
    pub(crate) case: &'static str,
    pub(crate) what: String,
    pub(crate) figure: String,
    pub(crate) target: &'static str,
    pub(crate) result: String,
}

pub(crate) struct Report {
    /// The cost of one probe hit, once measured.
    pub(crate) per_hit_ns: f64,
    pub(crate) rows: Vec<Row>,
    /// Where a target is missed: by how much, and what limits it.
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        case: &'static str,
        what: impl Into<String>,
        figure: impl Into<String>,
        target: &'static str,
        result: impl Into<String>,
    ) {
        let row = Row { case, what: what.into(), figure: figure.into(), target, result: result.into() };
        println!("{:<18} {:<44} {:<34} {:<16} {}", row.case, row.what, row.figure, row.target, row.result);
        self.rows.push(row);
    }
}

pub(crate) fn machine() -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    let pkg = |p: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", p])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    format!(
        "{cores} cores, {mem_gib:.0} GiB, {os}, kernel {}, libpam {}, OpenSSH {}, bpftrace {}",
        kernel.trim(),
        pkg("libpam0g"),
        pkg("openssh-server"),
        if has_bpftrace() { pkg("bpftrace") } else { "not installed".into() }
    )
}

pub(crate) fn write_markdown(path: &Path, report: &Report, quick: bool) {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = String::from("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `cargo xtask bench{}` on {date}, in one run on one machine: {}.\n\n\
         Every figure below comes from that run. The benchmarks print figures; they do not pass or fail.\n\n",
        if quick { " --quick" } else { "" },
        machine()
    ));
    md.push_str("| case | what | figure | target | result |\n|---|---|---|---|---|\n");
    for r in &report.rows {
        md.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.case, r.what, r.figure, r.target, r.result));
    }
    md.push_str("\n## Where a target is missed\n\n");
    if report.notes.is_empty() {
        md.push_str("Every target was met in this run.\n");
    }
    for n in &report.notes {
        md.push_str(&format!("- {n}\n"));
    }
    md.push_str(METHOD);
    fs::write(path, md).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub(crate) const METHOD: &str = "
## How each figure is taken

The harness is `tests/src/bin/bench/`, run by `cargo xtask bench` (as root). It uses the same
real components as the integration tests: a private sshd on 127.0.0.1, real libpam, and
`pam-driver`, which calls libpam's `pam_start`/`pam_open_session`/`pam_close_session`/`pam_end`
directly with a `pam_permit` service. PAM benchmarks use a private copy of libpam (through
`LD_LIBRARY_PATH`), so only their own sessions hit the probes.

- **Login overhead**: wall time of `ssh -b 127.0.0.1 user@127.0.0.1 true` with an ed25519 key
  and curve25519 key exchange, in blocks of logins per condition, in the order none, notifier,
  pam_exec, bpftrace, then the reverse, twice (four blocks per condition). The private sshd runs through a symlink, so it uses its own
  PAM service file: a copy of `/etc/pam.d/sshd`, plus, for the recipe,
  `session optional pam_exec.so recipe.sh` (bash: `getent hosts $PAM_RHOST`, an IP comparison, and
  a local \"mail\" command that appends to a file). bpftrace runs a script with uprobes and
  uretprobes on the same seven libpam functions, printing one line per call.
- **Concurrent logins**: 8 ssh clients at once, each from its own 127.0.90.x address, each doing
  its logins back to back against one private sshd (`MaxStartups 100`); logins per second and the
  time of each login, without and with `notifier run` (sshd uses PAM, so both witnesses are
  active), and how many `session_open` events notifier reported for them.
- **Probe cost**: first the cost of one probe hit: pam-driver calls `pam_set_item(PAM_RHOST)`
  300,000 times on one handle, without and then with `notifier watch` attached (the median of the
  pairwise differences). A session of pam-driver hits the probes 8 times, so the cost per session
  is 8 × that; uretprobes cost somewhat more than the entry probe measured, so this is the low end.
  Then whole sessions: pairs of 3,000 on one thread, whose own run-to-run drift is larger than the
  difference.
- **Event latency**: 400 sessions/s; pam-driver writes the CLOCK_REALTIME time at which each
  `pam_open_session` returned, and the harness the time each JSON line arrived on notifier's stdout.
- **Throughput**: 2 threads as fast as libpam allows, on a copy of libpam with the probes and on
  one without, several times; then the same with notifier stopped (SIGSTOP) so that the 2 MiB ring
  overflows, to show the loss reported.
- **Footprint**: `VmRSS` of `notifier run`; idle CPU from utime + stime and wake-ups from the
  context switches of all its threads (`/proc/PID/task/*/status`) over the idle period; start-up
  from exec to the `Streaming login events.` log line, against bpftrace's launch to its `BEGIN` probe.
- **Fuzzing**: `cargo fuzz` (libFuzzer, AddressSanitizer) on the decoding of kernel records
  (`decode`), the parsing of `SSH_AUTH_INFO_0`, `SSH_CONNECTION` and rhosts (`authinfo`), and the
  config (`config`), for a fixed time each; the targets are in `fuzz/`.
- **Witness cost**: the sshd witness's fork and exit tracepoints fire for every process on the
  machine, and its libc `accept` uprobe for every caller of `accept()`. Pairs of runs without and
  with `notifier watch`: 2,000 spawns of `/bin/true`, 5,000 loopback connect + accept pairs in one
  process (not sshd, so the probe only checks the executable and moves on), and 2,000,000
  `getppid()` system calls (which no probe traces: the witness uses no `syscalls:` tracepoint,
  whose slow path would tax every system call); each figure is the median of the pairwise
  differences.
- **Alert latency**: 20 sessions/s from new addresses, each raising an alert to a webhook on
  127.0.0.1; from `pam_open_session` returning to the request read by the receiver.
";
