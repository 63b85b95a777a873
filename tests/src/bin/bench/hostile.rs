//! Case: an unprivileged flood of libpam calls while root's sessions go on. It gives the rate the
//! flood reaches, how many of root's sessions were reported (target: all), and the reader's CPU.

use super::*;

pub(crate) fn hostile_load(report: &mut Report, seconds: u64, sessions: usize) {
    let service = PamService::permit("ntbhostile");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    // A copy that nobody may run.
    let driver = lab.path("pam-driver");
    fs::copy(pam_driver(), &driver).expect("copying pam-driver");
    fs::set_permissions(&driver, fs::Permissions::from_mode(0o755)).expect("chmod");
    let n = Notifier::watch(&["--json", "--libpam", libpam.to_str().expect("path"), "--service", &service.name]);
    let (cpu0, _) = cpu_and_switches(n.pid());
    let start = Instant::now();
    let rhost = "h".repeat(4000);
    let flood = Command::new("unshare")
        .arg("--net")
        .args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&driver)
        .env("LD_LIBRARY_PATH", &lab.dir)
        .args(["--service", &service.name, "--user", "flooder", "--rhost", &rhost, "--threads", "2"])
        .args(["--flood", "set-item", "--seconds", &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("flood");
    std::thread::sleep(Duration::from_millis(500));
    // Root's sessions meanwhile, spread over the flood.
    let rate = (sessions as f64 / (seconds as f64 - 1.0)).max(1.0);
    let made = drive(
        Some(&lab.dir),
        &service.name,
        &["--count", &sessions.to_string(), "--rate", &format!("{rate:.0}"), "--rhost", "127.0.85.{i}"],
    );
    let out = flood.wait_with_output().expect("flood");
    let wall = start.elapsed();
    let (cpu1, _) = cpu_and_switches(n.pid());
    let calls: f64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("calls=")?.parse().ok())
        .unwrap_or(0.0);
    let opened = made.get("opened").copied().unwrap_or(0.0) as usize;
    let events = n.json_until(Duration::from_secs(20), |e| {
        of_kind(e, "session_open").iter().filter(|o| o["user"] == "benchuser").count() >= opened
    });
    let seen = of_kind(&events, "session_open").iter().filter(|o| o["user"] == "benchuser").count();
    let lost = of_kind(&events, "events_lost");
    let sum = |k: &str| lost.iter().filter_map(|l| l[k].as_u64()).sum::<u64>();
    let cpu_pct = (cpu1 - cpu0) as f64 / 100.0 / wall.as_secs_f64() * 100.0;
    report.row(
        "hostile load",
        format!("pam_set_item calls/s by nobody (2 threads, {seconds} s, 4,000-byte rhost)"),
        format!("{:.2} M/s", calls / seconds as f64 / 1e6),
        "",
        "-",
    );
    report.row(
        "hostile load",
        "root's sessions reported during the flood",
        format!("{seen} of {opened} ({} lost)", opened - seen.min(opened)),
        "0 lost",
        met(seen == opened && opened > 0),
    );
    report.row(
        "hostile load",
        "records dropped: over budget / trusted",
        format!("{} / {} ({} events_lost lines)", sum("budget"), sum("trusted"), lost.len()),
        "0 trusted",
        met(sum("trusted") == 0),
    );
    report.row("hostile load", "reader CPU during the flood", format!("{cpu_pct:.1} % of one core"), "", "-");
    if report.per_hit_ns.is_finite() {
        report.notes.push(format!(
            "Hostile load: the probes now keep root's callers and everyone else's apart (two rings, a \
             budget per real uid) and build each record in the calling thread's own buffer. Probe cost \
             per session: {:.1} µs ({:.0} ns per hit × {HITS_PER_SESSION:.0}); the BENCHMARKS.md of stop 9, \
             before this change, had 12.8 µs (1,595 ns per hit), measured on that session's machine.",
            report.per_hit_ns * HITS_PER_SESSION / 1000.0,
            report.per_hit_ns
        ));
    }
}
