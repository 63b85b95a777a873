//! The service: the packaged unit (systemd-analyze, and the capabilities it grants, tried for real
//! with setpriv), the sd_notify protocol, SIGHUP reloads without a missed login, and the metrics
//! endpoint against the events a test produced.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use notifier_tests::*;

use super::{pam_driver, wait_for};

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/notifier.service");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The capabilities in the unit's CapabilityBoundingSet=.
fn unit_capabilities(unit: &str) -> Vec<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `notifier ARGS` as uid 0 with exactly `caps` (and no_new_privs), as the unit runs it.
fn with_capabilities(caps: &[String], args: &[&str]) -> Command {
    let set: String = caps.iter().map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "setpriv", "--no-new-privs", "--inh-caps=-all", &format!("--bounding-set=-all{set}"), "--"])
        .arg(notifier_bin())
        .args(args);
    cmd
}

fn one_session(service: &str, user: &str, rhost: &str) {
    run(Command::new(pam_driver()).args(["--service", service, "--user", user, "--rhost", rhost]));
}

#[test]
fn unit_verifies_and_each_capability_it_grants_is_needed() {
    if !kernel_tests_enabled() {
        return;
    }
    let unit = unit_text();
    let lab = Lab::new();
    // The unit as installed, pointing at the binary under test (verify checks that it exists).
    let path = lab.path("notifier.service");
    fs::write(&path, unit.replace("ExecStart=/usr/bin/notifier ", &format!("ExecStart={} ", notifier_bin().display())))
        .expect("writing the unit");
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze");
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !complaints.contains("notifier.service"), "systemd-analyze verify: {complaints}");
    let security = run(Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path));
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("notifier.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{security}"));
    eprintln!("systemd-analyze security --offline=yes: exposure {exposure}");
    assert!(exposure <= 3.0, "exposure {exposure} (README records 2.6)");

    let caps = unit_capabilities(&unit);
    assert_eq!(caps, ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], "each capability the unit grants is checked below");
    let service = PamService::permit("ntcaps");
    let driver = fs::canonicalize(pam_driver()).expect("pam-driver path");

    // With exactly the unit's capabilities: attaches, streams, and knows the caller's executable.
    let n = Notifier::spawn(with_capabilities(&caps, &["watch", "--json", "--service", &service.name]));
    one_session(&service.name, "capuser", "127.0.0.7");
    let (e, _) = wait_for(&n, "capuser", "session_open");
    assert_eq!(e["peer"]["ip"], "127.0.0.7", "{e}");
    assert_eq!(e["trusted"], true, "{e}");
    assert_eq!(e["exe"], driver.to_str().expect("UTF-8"), "{e}");
    assert!(!n.stderr().contains("WARN"), "no warning with the unit's capabilities: {}", n.stderr());
    drop(n);

    // Without CAP_SYS_ADMIN: one error line that names it, at once.
    let out = with_capabilities(&caps[1..], &["watch"]).output().expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "missing privileges exit 77 (EX_NOPERM): {err}");
    assert!(err.contains("permission denied") && err.contains("missing: CAP_SYS_ADMIN"), "{err}");
    assert!(
        unit.lines().any(|l| l == "RestartPreventExitStatus=77 78"),
        "the unit does not restart on a config error or missing privileges"
    );
    // CAP_BPF and CAP_PERFMON instead: enough for uprobe_multi links (Linux 6.6+), not for the
    // perf-event uprobes of older kernels, and the error then says which is missing.
    let bpf_perfmon = ["CAP_BPF".to_string(), "CAP_PERFMON".into(), caps[1].clone()];
    let mut perf = with_capabilities(&bpf_perfmon, &["watch"]);
    let out = perf.env("NOTIFIER_UPROBE_MULTI", "0").output().expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("CAP_SYS_ADMIN") && err.contains("perf_event_open"), "{err}");
    let n = Notifier::spawn(with_capabilities(&bpf_perfmon, &["watch", "--json", "--service", &service.name]));
    assert!(n.stderr().contains("uprobe_multi=true"), "{}", n.stderr());
    one_session(&service.name, "capuser3", "127.0.0.9");
    let (e, _) = wait_for(&n, "capuser3", "session_open");
    assert_eq!(e["peer"]["ip"], "127.0.0.9", "{e}");
    drop(n);

    // Without CAP_SYS_PTRACE: it runs, warns once naming it, and the executable is unknown; the
    // trusted flag comes from the kernel and is unaffected.
    let n = Notifier::spawn(with_capabilities(&caps[..1], &["watch", "--json", "--service", &service.name]));
    assert_eq!(n.stderr().matches("CAP_SYS_PTRACE is missing").count(), 1, "{}", n.stderr());
    one_session(&service.name, "capuser2", "127.0.0.8");
    let (e, _) = wait_for(&n, "capuser2", "session_open");
    assert_eq!(e["exe"], serde_json::Value::Null, "{e}");
    assert_eq!(e["trusted"], true, "{e}");
}

/// Datagrams on a NOTIFY_SOCKET until one contains `want`; returns them all.
fn notifications_until(sock: &UnixDatagram, want: &str) -> Vec<String> {
    notifications_until_line(sock, want, |l| l == want)
}

/// Datagrams on a NOTIFY_SOCKET until one has a line for which `done` holds.
fn notifications_until_line(sock: &UnixDatagram, want: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no {want} (got {seen:?}): {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = msg.lines().any(&done);
        seen.push(msg);
        if found {
            return seen;
        }
    }
}

#[test]
fn sd_notify_ready_after_attach_then_watchdog_reload_and_stopping() {
    if !kernel_tests_enabled() {
        return;
    }
    let d = DaemonLab::new(|_| String::new());
    let socket = d.lab.path("notify.sock");
    let sock = UnixDatagram::bind(&socket).expect("binding NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    // As systemd starts it: WATCHDOG_PID names the service's own pid, hence the exec.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --json --config \"$1\""])
        .arg(notifier_bin())
        .arg(&d.config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000");
    let mut n = Notifier::spawn(cmd);

    let first = notifications_until(&sock, "READY=1");
    assert_eq!(first.len(), 1, "READY=1 is the first message: {first:?}");
    assert!(n.stderr().contains("Probes attached."), "READY only once attached: {}", n.stderr());
    // What `systemctl status` shows: the probes, the events, the spool.
    let status =
        notifications_until_line(&sock, "STATUS=watching logins: …", |l| l.starts_with("STATUS=watching logins: "));
    let line = status.last().and_then(|m| m.lines().find(|l| l.starts_with("STATUS="))).unwrap_or_default().to_string();
    let probes: usize = line["STATUS=watching logins: ".len()..].split(' ').next().unwrap_or("").parse().unwrap_or(0);
    assert!(probes >= 10 && line.contains(" files; ") && line.contains(" alerts pending"), "{line}");
    // WatchdogSec=200ms: pinged every 100 ms.
    let start = Instant::now();
    notifications_until(&sock, "WATCHDOG=1");
    notifications_until(&sock, "WATCHDOG=1");
    assert!(start.elapsed() < Duration::from_secs(2), "two watchdog pings took {:?}", start.elapsed());

    n.signal(libc::SIGHUP);
    let reload = notifications_until(&sock, "READY=1");
    let reloading = reload.iter().find(|m| m.contains("RELOADING=1")).expect("RELOADING=1 before READY=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "systemd 253+ needs MONOTONIC_USEC: {reloading}");
    assert!(n.alive());

    let status = n.terminate();
    notifications_until(&sock, "STOPPING=1");
    assert!(status.success(), "{status:?}");
}

fn config(service: &str, metrics_port: u16, hook: &str, policy: &str) -> String {
    format!(
        "[capture]\nservices = [\"{service}\"]\n\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
         [[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook}\"\n\n{policy}\n"
    )
}

#[test]
fn sighup_keeps_a_bad_config_applies_a_good_one_and_misses_no_login_and_metrics_match() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("nthup");
    let receiver = HttpReceiver::start();
    let port = unused_port();
    let hook = receiver.url("/hook");
    let d = DaemonLab::new(|_| config(&service.name, port, &hook, ""));
    let write_config = |policy: &str| {
        let text = format!(
            "state_dir = \"{}\"\n{}",
            d.lab.path("state").display(),
            config(&service.name, port, &hook, policy)
        );
        fs::write(&d.config, text).expect("config");
    };
    let mut n = Notifier::run(&d.config);

    // 300 sessions over about 10 s, through both reloads.
    const SESSIONS: usize = 300;
    let mut driver = Command::new(pam_driver())
        .args(["--service", &service.name, "--user", "hupuser", "--rhost", "127.0.0.9"])
        .args(["--count", &SESSIONS.to_string(), "--rate", "30"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pam-driver");

    std::thread::sleep(Duration::from_millis(2500));
    write_config("[policy]\nknown_networks = [\"not-a-network\"]");
    n.signal(libc::SIGHUP);
    assert!(n.wait_stderr("Config reload failed", Duration::from_secs(10)), "{}", n.stderr());
    assert!(n.stderr().contains("not-a-network"), "the log names the bad value: {}", n.stderr());
    assert!(n.alive(), "a bad config does not stop the daemon");

    std::thread::sleep(Duration::from_millis(2500));
    write_config("[policy]\nknown_networks = [\"127.0.0.0/8\"]");
    n.signal(libc::SIGHUP);
    assert!(n.wait_stderr("Config reloaded.", Duration::from_secs(10)), "{}", n.stderr());

    assert!(driver.wait().expect("pam-driver").success());
    let events = n.json_until(Duration::from_secs(30), |e| of_kind(e, "session_close").len() >= SESSIONS);
    assert!(of_kind(&events, "events_lost").is_empty(), "nothing lost across the reloads");
    let opens = of_kind(&events, "session_open");
    assert_eq!(opens.len(), SESSIONS, "every login reported across both reloads");
    assert_eq!(of_kind(&events, "session_close").len(), SESSIONS);
    let verdicts: Vec<&str> = opens.iter().map(|e| e["verdict"].as_str().expect("verdict")).collect();
    // First seen, then known under the old config (the bad one changed nothing), then allowlisted
    // once the good config applies: one switch, in order.
    assert_eq!(verdicts[0], "first_login");
    let known = verdicts.iter().take_while(|v| **v != "allowlisted").skip(1).count();
    let allowlisted = verdicts.iter().filter(|v| **v == "allowlisted").count();
    assert!(known > 0 && allowlisted > 0, "{verdicts:?}");
    assert_eq!(1 + known + allowlisted, SESSIONS, "known, then only allowlisted: {verdicts:?}");

    // One alert (the first login); the webhook got it.
    let got = receiver.wait(Duration::from_secs(10), |r| !r.is_empty());
    assert_eq!(got.len(), 1);

    // The metrics endpoint, on loopback, agrees with what was produced.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = http_get(port, "/metrics");
        if metric(&text, "notifier_alerts_sent_total{sink=\"hook\"}") == Some(1.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let m = |sample: &str| metric(&text, sample).unwrap_or_else(|| panic!("no {sample} in:\n{text}"));
    assert_eq!(m("notifier_events_total{event=\"session_open\"}"), SESSIONS as f64);
    assert_eq!(m("notifier_events_total{event=\"session_close\"}"), SESSIONS as f64);
    assert_eq!(m("notifier_verdicts_total{verdict=\"first_login\"}"), 1.0);
    assert_eq!(m("notifier_verdicts_total{verdict=\"known\"}"), known as f64);
    assert_eq!(m("notifier_verdicts_total{verdict=\"allowlisted\"}"), allowlisted as f64);
    for cause in ["ring_full", "inflight_full", "handles_full", "read_failed", "no_entry", "session_table_full"] {
        assert_eq!(m(&format!("notifier_events_lost_total{{cause=\"{cause}\"}}")), 0.0, "{cause}");
    }
    assert_eq!(m("notifier_alerts_sent_total{sink=\"hook\"}"), 1.0);
    assert_eq!(m("notifier_alerts_pending{sink=\"hook\"}"), 0.0);
    assert_eq!(m("notifier_spool_depth"), 0.0);
    assert_eq!(m("notifier_config_reloads_total{result=\"failed\"}"), 1.0);
    assert_eq!(m("notifier_config_reloads_total{result=\"ok\"}"), 1.0);
    let attached: f64 = text
        .lines()
        .filter(|l| l.starts_with("notifier_probes_attached{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(attached >= 13.0, "every probe attached: {text}");
    // Bound to loopback only.
    let listening = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    assert!(listening.lines().any(|l| l.split_whitespace().nth(1) == Some(local.as_str())), "127.0.0.1:{port}");
    assert!(!listening.lines().any(|l| l.split_whitespace().nth(1) == Some(format!("00000000:{port:04X}").as_str())));
}

/// The system calls a `SystemCallFilter=` list allows (or denies), groups expanded by
/// `systemd-analyze syscall-filter`.
fn syscalls(entries: &[&str]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for entry in entries {
        if !entry.starts_with('@') {
            out.insert(entry.to_string());
            continue;
        }
        let listing = run(Command::new("systemd-analyze").args(["syscall-filter", entry]));
        let members: Vec<&str> =
            listing.lines().skip(1).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        out.extend(syscalls(&members));
    }
    out
}

/// The notifier that strace runs; killed on drop, should the test fail before it stopped it.
struct Traced(i32);

impl Traced {
    fn signal(&self, signal: i32) {
        // SAFETY: kill with the pid of a child of our own child, alive until this guard drops.
        unsafe { libc::kill(self.0, signal) };
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // Only if it is still notifier (not a reused pid).
        if fs::read_to_string(format!("/proc/{}/comm", self.0)).is_ok_and(|c| c.trim() == "notifier") {
            self.signal(libc::SIGKILL);
        }
    }
}

#[test]
fn every_system_call_the_daemon_makes_passes_the_units_filter() {
    if !kernel_tests_enabled() {
        return;
    }
    // The unit's filter: the allow list, minus the `~` lists.
    let unit = unit_text();
    let lines: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")).collect();
    let allow: Vec<&str> = lines.iter().filter(|l| !l.starts_with('~')).flat_map(|l| l.split_whitespace()).collect();
    let deny: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix('~')).flat_map(|l| l.split_whitespace()).collect();
    assert!(!allow.is_empty(), "the unit has an allow list");
    let (allowed, denied) = (syscalls(&allow), syscalls(&deny));
    // Under systemd, tracefs is mounted before the service starts (the unit wants
    // sys-kernel-tracing.mount), so the daemon never mounts it itself there.
    mount_tracefs();

    // The daemon's whole life under strace: attach, sessions, an alert to a webhook that fails
    // and one that succeeds, a metrics scrape, a reload, and SIGTERM.
    let service = PamService::permit("ntsys");
    let receiver = HttpReceiver::start();
    let port = unused_port();
    let d = DaemonLab::new(|_| config(&service.name, port, &receiver.url("/hook"), ""));
    let trace = d.lab.path("strace.out");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"]).arg(&trace).arg(notifier_bin()).args(["run", "--json", "--config"]).arg(&d.config);
    let n = Notifier::spawn(cmd);
    one_session(&service.name, "sysuser", "127.0.0.10");
    wait_for(&n, "sysuser", "session_close");
    receiver.wait(Duration::from_secs(10), |r| !r.is_empty());
    assert!(http_get(port, "/metrics").contains("notifier_events_total"));
    // Signals go to notifier itself: strace would detach on SIGTERM and leave it running.
    let children = format!("/proc/{0}/task/{0}/children", n.pid());
    let traced = Traced(fs::read_to_string(&children).expect("strace's child").trim().parse().expect("a pid"));
    traced.signal(libc::SIGHUP);
    assert!(n.wait_stderr("Config reloaded.", Duration::from_secs(10)), "{}", n.stderr());
    traced.signal(libc::SIGTERM);
    assert!(n.wait_stderr("Stopped; probes detached.", Duration::from_secs(20)), "{}", n.stderr());
    drop(n);

    let text = fs::read_to_string(&trace).expect("strace output");
    let used: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.split('(').next())
        .filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    assert!(used.contains("bpf") && used.contains("perf_event_open"), "the trace covers the attach: {used:?}");
    let refused: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s) || denied.contains(*s)).collect();
    assert!(refused.is_empty(), "system calls the unit's SystemCallFilter would refuse: {refused:?}");
    eprintln!("{} distinct system calls, all allowed by the unit", used.len());
}
