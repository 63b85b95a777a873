//! Resilience: hostile input through the real libpam, a full state filesystem, and a ring buffer
//! that overflows while the reader is stopped, with the losses counted exactly.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use notifier_tests::*;

use super::{pam_driver, wait_for};

#[test]
fn ten_thousand_hostile_sessions_give_valid_json_and_escaped_text_and_no_crash() {
    if !kernel_tests_enabled() {
        return;
    }
    const SESSIONS: usize = 10_000;
    let service = PamService::permit("nthostile");
    let mut json = Notifier::watch(&["--json", "--service", &service.name]);
    let mut text = Notifier::watch(&["--service", &service.name]);
    // In a network namespace of its own: libpam's audit record resolves an rhost that is not an
    // IP literal through the system resolver, which must never be asked. There, the lookup fails
    // at once (ENETUNREACH) and nothing leaves the machine; the uprobes see the process all the same.
    let out = run(Command::new("unshare")
        .arg("--net")
        .arg(pam_driver())
        .args(["--service", &service.name, "--user", "unused", "--hostile", "20261126"])
        .args(["--count", &SESSIONS.to_string(), "--threads", "2", "--rate", "1000"]));
    eprintln!("driver: {}", out.trim());
    // libpam itself refuses a few of these inputs at pam_open_session; those sessions never open.
    let field =
        |name: &str| -> usize { out.split_whitespace().find_map(|w| w.strip_prefix(name)?.parse().ok()).unwrap_or(0) };
    let opened = field("opened=");
    let closed = opened - field("pam_close_session=");
    assert!(opened > SESSIONS * 9 / 10, "{out}");

    // Every line parses as JSON (json_until panics on one that does not).
    let events = json.json_until(Duration::from_secs(90), |e| of_kind(e, "session_close").len() >= closed);
    let lost: Vec<_> = of_kind(&events, "events_lost");
    assert!(lost.is_empty(), "no loss at 1,000 sessions/s: {lost:?}");
    let opens = of_kind(&events, "session_open");
    assert_eq!(opens.len(), opened, "one session_open per session libpam opened");
    assert_eq!(of_kind(&events, "session_close").len(), closed);
    assert!(opens.iter().all(|e| e["user"].is_string() && e["service"] == service.name.as_str()));
    // Strings longer than a record's payload are cut and say so.
    let cut = opens.iter().filter(|e| e["truncated"].as_array().is_some_and(|t| !t.is_empty())).count();
    assert!(cut > 0, "some of the hostile strings were over 4 KiB");
    let with_peer = opens.iter().filter(|e| e["peer"]["ip"].is_string()).count();
    assert!(with_peer > opened / 5, "the valid IPv4 rhosts give a peer ({with_peer})");

    // One escaped text line per event: no control character reaches the terminal.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = 0;
    while lines < opened + closed {
        let left = deadline.checked_duration_since(Instant::now()).unwrap_or_default();
        let line = text.next_line(left).unwrap_or_else(|| panic!("{lines} text lines; stderr:\n{}", text.stderr()));
        assert!(!line.chars().any(char::is_control), "a control character in {line:?}");
        assert!(line.contains(" session_open ") || line.contains(" session_close "), "{line}");
        lines += 1;
    }
    assert!(json.alive() && text.alive(), "neither instance crashed");
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).expect("mount point");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")]).arg("tmpfs").arg(at));
        Self(at.to_path_buf())
    }

    /// Writes zeros until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn spooled(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
        .unwrap_or_default()
}

#[test]
fn a_full_state_filesystem_keeps_events_streaming_logs_once_and_loses_no_spooled_alert() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntfull");
    let receiver = HttpReceiver::start();
    receiver.respond_with(&[503; 10_000]);
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nservices = [\"{}\"]\n\n[alerts]\nretry_initial_ms = 100\nretry_max_secs = 1\n\n\
             [[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
            service.name,
            receiver.url("/hook")
        )
    });
    let tmpfs = Tmpfs::mount(&d.state(""), "512k");
    let n = Notifier::run(&d.config);
    let login = |user: &str, ip: &str| {
        run(Command::new(pam_driver()).args(["--service", &service.name, "--user", user, "--rhost", ip]));
        let (e, _) = wait_for(&n, user, "session_open");
        e
    };

    // Before: the alert for full1 is spooled while the receiver fails.
    let e = login("full1", "127.0.0.21");
    assert_eq!(e["verdict"], "first_login");
    let spool = d.state("spool/hook");
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled(&spool).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = spooled(&spool);
    assert_eq!(before.len(), 1, "one alert spooled");

    // Full: events still stream with verdicts, and each failure is logged once.
    let filler = tmpfs.fill();
    for i in 2..=6 {
        let e = login(&format!("full{i}"), &format!("127.0.0.{}", 20 + i));
        assert_eq!(e["verdict"], "first_login", "verdicts go on from memory: {e}");
        assert_eq!(e["alert"], true);
    }
    let log = n.stderr();
    assert_eq!(log.matches("Cannot save the login history").count(), 1, "{log}");
    assert_eq!(log.matches("Cannot write alerts to the spool").count(), 1, "{log}");
    assert!(before.iter().all(|p| p.exists()), "the alert spooled before is still there");

    // The receiver recovers: every alert arrives, the one spooled before among them.
    assert!(receiver.clear_script() > 0, "the receiver was still failing");
    let got = receiver.wait(Duration::from_secs(20), |r| {
        let users: std::collections::BTreeSet<String> =
            r.iter().filter_map(|q| q.json()["event"]["user"].as_str().map(str::to_string)).collect();
        (1..=6).all(|i| users.contains(&format!("full{i}")))
    });
    let users: std::collections::BTreeSet<String> =
        got.iter().filter_map(|q| q.json()["event"]["user"].as_str().map(str::to_string)).collect();
    assert!((1..=6).all(|i| users.contains(&format!("full{i}"))), "alerts delivered: {users:?}");

    // Space again: the next login saves everything learned meanwhile.
    fs::remove_file(&filler).expect("removing the filler");
    login("full7", "127.0.0.27");
    assert!(n.wait_stderr("The login history is saved again.", Duration::from_secs(5)), "{}", n.stderr());
    let known = d.known_json();
    let text = known.to_string();
    assert!((1..=7).all(|i| text.contains(&format!("\"full{i}\""))), "{known}");
}

#[test]
fn ring_buffer_overflow_is_counted_exactly() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntring");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let port = unused_port();
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nlibpam = [\"{}\"]\n\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n",
            libpam.display()
        )
    });
    let n = Notifier::run(&d.config);
    let drive = |count: usize| {
        run(Command::new(pam_driver())
            .env("LD_LIBRARY_PATH", &lab.dir)
            .args(["--service", &service.name, "--user", "ringuser", "--rhost", "127.0.0.31"])
            .args(["--count", &count.to_string(), "--threads", "2"]));
    };
    let records_and_lost = || {
        let text = http_get(port, "/metrics");
        let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}")) as u64;
        (m("notifier_kernel_records_total"), m("notifier_events_lost_total{cause=\"ring_full\"}"))
    };
    // Waits until the counters stop moving; returns them.
    let settle = || {
        let mut last = records_and_lost();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = records_and_lost();
            if now == last {
                return now;
            }
            last = now;
        }
    };

    // Calibration: records per session, with no loss.
    const CALIBRATION: u64 = 100;
    drive(CALIBRATION as usize);
    let (records, lost) = settle();
    assert_eq!(lost, 0);
    assert_eq!(records % CALIBRATION, 0, "{records} records for {CALIBRATION} sessions");
    let per_session = records / CALIBRATION;
    assert!(per_session >= 5, "{per_session} records per session");

    // The reader is stopped while 8,000 sessions run: the 2 MiB ring fills and the rest is lost.
    const BURST: u64 = 8_000;
    n.signal(libc::SIGSTOP);
    drive(BURST as usize);
    n.signal(libc::SIGCONT);
    let (records, lost) = settle();
    eprintln!("{records} records read, {lost} lost (ring full), {per_session} per session");
    assert!(lost > 0, "the ring overflowed");
    assert_eq!(records + lost, per_session * (CALIBRATION + BURST), "read + lost = written, exactly");
    // The events_lost lines on stdout say the same.
    let mut reported = 0;
    while let Some(line) = n.next_line(Duration::from_millis(500)) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if v["event"] == "events_lost" {
            reported += v["ring_full"].as_u64().expect("ring_full");
        }
    }
    assert_eq!(reported, lost, "the events_lost lines add up to the same count");
}

#[test]
fn a_flood_of_calls_that_never_complete_cannot_blind_the_reader() {
    if !kernel_tests_enabled() {
        return;
    }
    // Records that do not complete an event do not wake the reader by themselves; once a quarter
    // of the ring is unread they do, so a flood of them is read, not left to fill the ring.
    let service = PamService::permit("ntflood");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let n = Notifier::watch(&["--json", "--libpam", libpam.to_str().expect("path")]);
    let out = run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &lab.dir).args([
        "--service",
        &service.name,
        "--user",
        "flooder",
        "--rhost",
        "127.0.0.41",
        "--set-item-loop",
        "300000",
    ]));
    eprintln!("flood: {}", out.trim());
    run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &lab.dir).args([
        "--service",
        &service.name,
        "--user",
        "afterflood",
        "--rhost",
        "127.0.0.42",
    ]));
    let (e, _) = wait_for(&n, "afterflood", "session_open");
    assert_eq!(e["peer"]["ip"], "127.0.0.42");
    assert!(!n.stderr().contains("lost"), "nothing lost: {}", n.stderr());
}
