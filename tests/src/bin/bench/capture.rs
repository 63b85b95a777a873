//! Cases: the probes' cost per PAM session and on the rest of the machine (the sshd witness), event
//! latency, and throughput with the count of lost events.

use super::*;

pub(crate) const HITS_PER_SESSION: f64 = 8.0;

pub(crate) fn probe_cost(report: &mut Report, runs: usize) {
    let service = PamService::permit("ntbcost");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let path = libpam.to_str().expect("path");

    // One probe hit, measured in a loop of pam_set_item calls on one handle.
    const CALLS: &str = "300000";
    let (mut bare, mut traced) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        bare.push(drive(Some(&lab.dir), &service.name, &["--set-item-loop", CALLS])["ns_per_call"]);
        let n = Notifier::watch(&["--json", "--libpam", path]);
        traced.push(drive(Some(&lab.dir), &service.name, &["--set-item-loop", CALLS])["ns_per_call"]);
        drop(n);
    }
    let hit: Vec<f64> = traced.iter().zip(&bare).map(|(t, b)| t - b).collect();
    let per_hit = median(&hit);
    report.per_hit_ns = per_hit;
    report.row(
        "probe cost",
        format!("ns per probe hit (pam_set_item loop, {runs} pairs × {CALLS})"),
        format!("{:.0} → {:.0} ns, {:+.0} ns (spread {})", median(&bare), median(&traced), per_hit, spread(&hit)),
        "",
        "-",
    );
    let estimate = per_hit * HITS_PER_SESSION / 1000.0;

    // Whole sessions: the same difference, inside a session's own run-to-run drift.
    const N: f64 = 3000.0;
    let (mut without, mut with, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let a = drive(Some(&lab.dir), &service.name, &["--count", "3000", "--threads", "1"])["elapsed_ms"];
        let n = Notifier::watch(&["--json", "--libpam", path]);
        let b = drive(Some(&lab.dir), &service.name, &["--count", "3000", "--threads", "1"])["elapsed_ms"];
        drop(n);
        without.push(a * 1000.0 / N);
        with.push(b * 1000.0 / N);
        added.push((b - a) * 1000.0 / N);
    }
    let m = median(&added);
    report.row(
        "probe cost",
        format!("µs per PAM session, 1 thread ({runs} pairs × 3,000)"),
        format!("{:.0} → {:.0} µs, {:+.1} µs (spread {})", median(&without), median(&with), m, spread(&added)),
        "",
        "-",
    );
    report.row(
        "probe cost",
        format!("µs added per session: {HITS_PER_SESSION:.0} hits × the per-hit cost"),
        format!("{estimate:.1} µs"),
        "≤ 20 µs",
        met(estimate <= 20.0),
    );
    if estimate > 20.0 {
        report.notes.push(format!(
            "Probe cost: {per_hit:.0} ns per probe hit × {HITS_PER_SESSION:.0} hits = {estimate:.1} µs per \
             session, against 20 µs. Each hit is a trap into the kernel for the uprobe, the BPF program \
             (map lookups, a string copy from the caller, a ring buffer record), and the return."
        ));
    }
}

pub(crate) fn event_latency(report: &mut Report, count: usize) {
    let service = PamService::permit("ntblat");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let stamps = lab.path("stamps");
    let n = Notifier::watch(&["--json", "--libpam", libpam.to_str().expect("path")]);
    let driver = {
        let mut cmd = pam_driver_cmd();
        // An IP literal per session, so that each line can be matched to its session.
        cmd.env("LD_LIBRARY_PATH", &lab.dir)
            .args(["--service", &service.name, "--user", "latuser", "--rhost", "2001:db8::{i}", "--rate", "400"])
            .args(["--count", &count.to_string(), "--stamps"])
            .arg(&stamps)
            .stdout(Stdio::null());
        cmd.spawn().expect("pam-driver")
    };
    let mut arrivals: HashMap<u64, u128> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(count as u64 / 100 + 30);
    while arrivals.len() < count && Instant::now() < deadline {
        let Some(line) = n.next_line(Duration::from_secs(5)) else { break };
        let at = now_ns();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "session_open" {
            if let Some(i) = v["rhost"].as_str().and_then(|r| r.strip_prefix("2001:db8::")).and_then(|i| i.parse().ok())
            {
                arrivals.insert(i, at);
            }
        }
    }
    let mut driver = driver;
    let _ = driver.wait();
    let opened = read_stamps(&stamps);
    let lat: Vec<f64> =
        opened.iter().filter_map(|(i, t)| arrivals.get(i).map(|a| (*a as f64 - *t as f64) / 1e6)).collect();
    let p99 = pct(&lat, 99.0);
    report.row(
        "event latency",
        format!("pam_open_session return → JSON line (n={})", lat.len()),
        format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2}", median(&lat), p99, pct(&lat, 100.0)),
        "p99 < 5 ms",
        met(p99 < 5.0),
    );
}

pub(crate) fn throughput(report: &mut Report, count: usize, runs: usize) {
    let service = PamService::permit("ntbthr");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let count_s = count.to_string();
    let n = Notifier::watch(&["--json", "--libpam", libpam.to_str().expect("path")]);
    let (mut bare, mut traced, mut lost_at_max, mut delivered) = (Vec::new(), Vec::new(), 0, Vec::new());
    for _ in 0..runs {
        // Bare runs use a second private copy of libpam, which no probe is attached to, while
        // notifier stays attached to the first.
        let bare_lab = Lab::new();
        private_libpam(&bare_lab);
        bare.push(drive(Some(&bare_lab.dir), &service.name, &["--count", &count_s, "--threads", "2"])["rate"]);
        traced.push(drive(Some(&lab.dir), &service.name, &["--count", &count_s, "--threads", "2"])["rate"]);
        // Counted as the lines come (the harness's json_until would rescan them all per line).
        let (mut opens, mut closes) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (opens < count || closes < count) && Instant::now() < deadline {
            let Some(line) = n.next_line(Duration::from_secs(5)) else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match v["event"].as_str() {
                Some("session_open") => opens += 1,
                Some("session_close") => closes += 1,
                Some("events_lost") => lost_at_max += v["lost"].as_u64().unwrap_or(0),
                _ => {}
            }
        }
        delivered.push(format!("{opens}/{closes}"));
    }
    let rate = median(&traced);
    report.row(
        "throughput",
        format!("2 threads as fast as libpam goes ({runs} runs × {count} sessions)"),
        format!(
            "{rate:.0}/s traced (spread {}), {:.0}/s bare (spread {}); opens/closes {}, {lost_at_max} lost",
            spread(&traced),
            median(&bare),
            spread(&bare),
            delivered.join(" ")
        ),
        "≥ 20,000/s, 0 lost",
        met(rate >= 20_000.0 && lost_at_max == 0),
    );
    let bare = median(&bare);
    // Above what libpam can offer: stop the reader so that the ring overflows.
    n.signal(libc::SIGSTOP);
    drive(Some(&lab.dir), &service.name, &["--count", &count_s, "--threads", "2"]);
    n.signal(libc::SIGCONT);
    let events = n.lines_until_quiet(Duration::from_secs(2), Duration::from_secs(60));
    let (mut opens, mut lost) = (0, 0);
    for line in &events {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        match v["event"].as_str() {
            Some("session_open") => opens += 1,
            Some("events_lost") => lost += v["ring_full"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    report.row(
        "throughput",
        format!("overload: reader stopped during {count} sessions"),
        format!("{opens} opens delivered, {lost} records lost, reported in events_lost"),
        "loss reported",
        met(lost > 0),
    );
    if rate < 20_000.0 {
        report.notes.push(format!(
            "Throughput: 20,000 sessions/s is out of reach of real PAM sessions here: with no tracer at \
             all, pam-driver on 2 threads ran {:.0} sessions/s ({:.0} µs per session per thread: \
             libpam reads /etc/pam.d and dlopens pam_permit on every pam_start). At the highest rate \
             libpam could offer, notifier lost {lost_at_max} events. Loss above capacity was produced \
             by stopping the reader instead, and every lost record was reported.",
            bare,
            2e6 / bare,
        ));
    }
}

/// What the sshd witness's tracepoints cost everything else on the machine: every process's fork
/// and exit, and every `accept()`, hit them (sshd or not).
pub(crate) fn witness_cost(report: &mut Report, runs: usize) {
    const SPAWNS: usize = 2000;
    const ACCEPTS: usize = 5000;
    let spawns = || {
        let start = Instant::now();
        for _ in 0..SPAWNS {
            let status = Command::new("/bin/true").status().expect("/bin/true");
            assert!(status.success());
        }
        start.elapsed().as_secs_f64() * 1e6 / SPAWNS as f64
    };
    let accepts = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let start = Instant::now();
        for _ in 0..ACCEPTS {
            let client = std::net::TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            drop((client, server));
        }
        start.elapsed().as_secs_f64() * 1e6 / ACCEPTS as f64
    };
    // Any other system call: none is traced, so none should pay.
    const SYSCALLS: usize = 2_000_000;
    let syscalls = || {
        let start = Instant::now();
        for _ in 0..SYSCALLS {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        start.elapsed().as_secs_f64() * 1e9 / SYSCALLS as f64
    };
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let path = libpam.to_str().expect("path");
    let (mut spawn_added, mut accept_added, mut syscall_added) = (Vec::new(), Vec::new(), Vec::new());
    let (mut spawn_bare, mut accept_bare, mut syscall_bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (s0, a0, c0) = (spawns(), accepts(), syscalls());
        let n = Notifier::watch(&["--json", "--libpam", path]);
        assert!(n.stderr().contains("sshd witness attached"), "{}", n.stderr());
        let (s1, a1, c1) = (spawns(), accepts(), syscalls());
        drop(n);
        spawn_bare.push(s0);
        accept_bare.push(a0);
        syscall_bare.push(c0);
        spawn_added.push(s1 - s0);
        accept_added.push(a1 - a0);
        syscall_added.push(c1 - c0);
    }
    report.row(
        "witness cost",
        format!("ns per other system call, getppid ({runs} pairs × {SYSCALLS})"),
        format!(
            "{:.0} ns, {:+.1} ns (spread {})",
            median(&syscall_bare),
            median(&syscall_added),
            spread(&syscall_added)
        ),
        "",
        "-",
    );
    report.row(
        "witness cost",
        format!("µs per process spawn + exit ({runs} pairs × {SPAWNS})"),
        format!("{:.0} µs, {:+.1} µs (spread {})", median(&spawn_bare), median(&spawn_added), spread(&spawn_added)),
        "",
        "-",
    );
    report.row(
        "witness cost",
        format!("µs per loopback connect + accept ({runs} pairs × {ACCEPTS})"),
        format!("{:.1} µs, {:+.2} µs (spread {})", median(&accept_bare), median(&accept_added), spread(&accept_added)),
        "",
        "-",
    );
}
