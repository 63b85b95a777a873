//! Integration tests against real components: the built notifier binary with its eBPF probes, the
//! real libpam (system copy and private copies), pamtester, and a private OpenSSH sshd on loopback.
//! Each test filters the event stream by its own service, user or private libpam, since other PAM
//! traffic on the machine reaches the probes too.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::ffi::OsStringExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use notifier_tests::*;

#[path = "kernel/alerts.rs"]
mod alerts;
#[path = "kernel/containers.rs"]
mod containers;
#[path = "kernel/daemon.rs"]
mod daemon;
#[path = "kernel/fleet.rs"]
mod fleet;
#[path = "kernel/hostile.rs"]
mod hostile;
#[path = "kernel/local.rs"]
mod local;
#[path = "kernel/resilience.rs"]
mod resilience;
#[path = "kernel/service.rs"]
mod service;
#[path = "kernel/witness.rs"]
mod witness;

const WAIT: Duration = Duration::from_secs(15);

/// The PAM load driver built from this crate.
pub(crate) fn pam_driver() -> &'static str {
    env!("CARGO_BIN_EXE_pam-driver")
}

/// Reads JSON events for `user` until one of kind `kind` arrives; returns it and its arrival time.
pub(crate) fn wait_for(n: &Notifier, user: &str, kind: &str) -> (Value, Instant) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.checked_duration_since(Instant::now()).unwrap_or_default();
        let line = n
            .next_line(left)
            .unwrap_or_else(|| panic!("no {kind} for {user} within {WAIT:?}; stderr:\n{}", n.stderr()));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("invalid JSON {line:?}: {e}"));
        if v["user"] == user && v["event"] == kind {
            return (v, Instant::now());
        }
    }
}

fn ppid_of(pid: u64) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok())
}

#[test]
fn sshd_key_login_reports_user_peer_port_key_and_pid_then_close() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let fingerprint = ssh_keygen_fingerprint(&sshd.lab.path("client_key.pub"));
    let n = Notifier::watch(&["--json"]);

    let mut ssh = sshd
        .ssh(&user.name, "127.0.0.1", Some("127.0.0.7"), &[])
        .arg("echo \"$SSH_CONNECTION\"; sleep 2")
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut first = String::new();
    BufReader::new(ssh.stdout.take().expect("stdout")).read_line(&mut first).expect("reading ssh output");
    let session_up = Instant::now();
    let (open, seen) = wait_for(&n, &user.name, "session_open");
    let lag = seen.saturating_duration_since(session_up);
    assert!(lag < Duration::from_secs(1), "session_open came {lag:?} after the session started");

    // SSH_CONNECTION as the server saw it: "127.0.0.7 <client port> 127.0.0.1 <port>".
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "remote SSH_CONNECTION: {first:?}; sshd log:\n{}", sshd.log());
    let client_port: u64 = fields[1].parse().expect("port");
    assert_eq!(open["service"], "sshd");
    assert_eq!(open["peer"]["ip"], "127.0.0.7");
    assert_eq!(open["peer"]["port"], client_port);
    assert_eq!(open["rhost"], "127.0.0.7");
    assert_eq!(open["auth"]["method"], "publickey");
    assert_eq!(open["auth"]["key_type"], "ssh-ed25519");
    assert_eq!(open["auth"]["fingerprint"], fingerprint.as_str());
    assert_eq!(open["trusted"], true);
    assert_eq!(open["caller_uid"], 0);
    assert_eq!(open["exe"], "/usr/sbin/sshd");
    // The pid is the per-connection [priv] process: a child of our listener, alive during the session.
    let pid = open["pid"].as_u64().expect("pid");
    assert_eq!(ppid_of(pid), Some(sshd.pid()), "pid {pid} is not a child of sshd {}", sshd.pid());

    assert!(ssh.wait().expect("ssh").success(), "ssh failed; sshd log:\n{}", sshd.log());
    let (close, _) = wait_for(&n, &user.name, "session_close");
    assert_eq!(close["session"], open["session"]);
    let duration = close["duration_ms"].as_u64().expect("duration_ms");
    assert!((1900..15_000).contains(&duration), "duration {duration} ms for a 2 s session");
    assert_eq!(close["peer"], open["peer"]);
    assert_eq!(open["schema"], 1);
    assert_schema_valid(None, &[open, close]);
}

/// The shipped JSON Schema accepts every kind of line in the golden file and rejects drift: a
/// missing version, an unknown key, an unknown verdict, a wrong type.
#[test]
fn the_json_schema_accepts_every_golden_line_and_rejects_drift() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../notifier/src/output/golden.jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(&golden)
        .expect("golden.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(lines.len() >= 9, "every kind of line");
    assert_schema_valid(None, &lines);
    let drifted = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = lines[4].clone();
        change(v.as_object_mut().expect("object"));
        v
    };
    let bad = [
        drifted(&|m| {
            m.remove("schema");
        }),
        drifted(&|m| {
            m.insert("colour".into(), Value::from("red"));
        }),
        drifted(&|m| {
            m.insert("verdict".into(), Value::from("probably_fine"));
        }),
        drifted(&|m| {
            m.insert("pid".into(), Value::from("4242"));
        }),
    ];
    for (value, error) in bad.iter().zip(schema_errors(None, &bad)) {
        assert!(error.is_some(), "accepted: {value}");
    }
}

/// Kernels before 6.6 have no uprobe_multi links; notifier then attaches aya's perf-event uprobes,
/// forced here, and sees the same login through both witnesses.
#[test]
fn perf_event_uprobes_of_older_kernels_see_an_sshd_login_through_both_witnesses() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let mut cmd = Command::new(notifier_bin());
    cmd.args(["watch", "--json"]).env("NOTIFIER_UPROBE_MULTI", "0");
    let n = Notifier::spawn(cmd);
    assert!(n.stderr().contains("uprobe_multi=false"), "{}", n.stderr());
    let out = sshd.ssh(&user.name, "127.0.0.1", Some("127.0.0.11"), &[]).arg("true").output().expect("ssh");
    assert!(out.status.success(), "ssh failed; sshd log:\n{}", sshd.log());
    let (open, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(open["peer"]["ip"], "127.0.0.11", "{open}");
    assert_eq!(open["witnesses"], serde_json::json!(["pam", "sshd"]), "{open}");
    let (close, _) = wait_for(&n, &user.name, "session_close");
    assert_eq!(close["session"], open["session"]);
}

#[test]
fn sshd_wrong_password_gives_auth_failure_with_user_and_peer() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication yes");
    let user = TestUser::new();
    user.set_password("Right-horse-battery-1");
    let n = Notifier::watch(&["--json"]);

    let status = sshd.password_ssh(&user.name, "127.0.0.9", "wrong-password").status().expect("sshpass");
    assert_eq!(status.code(), Some(5), "sshpass should report a wrong password; sshd log:\n{}", sshd.log());
    let (fail, _) = wait_for(&n, &user.name, "auth_failure");
    assert_eq!(fail["service"], "sshd");
    assert_eq!(fail["peer"]["ip"], "127.0.0.9");
    assert_eq!(fail["pam_result"], "PAM_AUTH_ERR");
    assert_eq!(fail["trusted"], true);
    // No session may follow a failed password.
    let later = n.lines_until_quiet(Duration::from_millis(700), Duration::from_secs(3));
    assert!(
        !later.iter().any(|l| l.contains("\"session_open\"") && l.contains(&user.name)),
        "a session opened after a wrong password: {later:?}"
    );
}

#[test]
fn sshd_login_over_ipv6_shows_peer_v6() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let n = Notifier::watch(&["--json"]);
    let out = run(sshd.ssh(&user.name, "::1", None, &[]).arg("echo \"$SSH_CONNECTION\""));
    let port: u64 = out.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("remote SSH_CONNECTION");
    let (open, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(open["peer"]["ip"], "::1");
    assert_eq!(open["peer"]["port"], port);
    assert_eq!(open["rhost"], "::1");
}

fn pamtester(service: &str, user: &str) -> Command {
    let mut cmd = Command::new("pamtester");
    cmd.args(["-I", "rhost=203.0.113.9", "-I", "tty=pts/9", service, user, "open_session", "close_session"]);
    cmd.stdout(Stdio::null());
    cmd
}

#[test]
fn pamtester_as_root_is_trusted_and_as_a_user_is_not() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntsvc");
    let user = TestUser::new();
    let n = Notifier::watch(&["--json", "--service", &service.name]);

    let mut child = pamtester(&service.name, "root").spawn().expect("pamtester");
    let pid = child.id();
    assert!(child.wait().expect("pamtester").success());
    let events = n.json_until(WAIT, |e| e.len() >= 2);
    assert_eq!(of_kind(&events, "session_open").len(), 1, "{events:#?}");
    assert_eq!(of_kind(&events, "session_close").len(), 1, "{events:#?}");
    for e in &events {
        assert_eq!(e["service"], service.name.as_str());
        assert_eq!(e["user"], "root");
        assert_eq!(e["rhost"], "203.0.113.9");
        assert_eq!(e["peer"]["ip"], "203.0.113.9");
        assert_eq!(e["peer"]["port"], Value::Null);
        assert_eq!(e["tty"], "pts/9");
        assert_eq!(e["pid"], pid);
        assert_eq!(e["comm"], "pamtester");
        assert_eq!(e["caller_uid"], 0);
        assert_eq!(e["trusted"], true, "{e}");
    }
    assert_eq!(events[0]["session"], events[1]["session"]);

    // The same command from an unprivileged user: the rhost is whatever that user claims.
    let status = Command::new("setpriv")
        .args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string(), "--clear-groups", "--"])
        .arg("pamtester")
        .args(pamtester(&service.name, &user.name).get_args())
        .stdout(Stdio::null())
        .status()
        .expect("setpriv pamtester");
    assert!(status.success(), "pamtester as {} failed", user.name);
    let events = n.json_until(WAIT, |e| e.len() >= 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    for e in &events {
        assert_eq!(e["user"], user.name.as_str());
        assert_eq!(e["rhost"], "203.0.113.9");
        assert_eq!(e["caller_uid"], user.uid);
        assert_eq!(e["trusted"], false, "an unprivileged caller must never look trusted: {e}");
    }
}

#[test]
fn hostile_user_and_host_give_one_valid_line_per_event_with_truncation_marked() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("nthost");
    let lab = Lab::new();
    let json = Notifier::watch(&["--json", "--service", &service.name]);
    let text = Notifier::watch(&["--service", &service.name]);

    // A 1 KiB user name with a newline, quotes, an escape sequence and bytes that are not UTF-8,
    // and a 5 KiB host that must be cut.
    const PREFIX: &[u8] = b"evil\"user\nroot\x1b[31m\\\xff\xfe";
    let mut user: Vec<u8> = PREFIX.to_vec();
    user.resize(1024, b'u');
    let rhost: Vec<u8> = b"host\n\"x\" ".iter().copied().cycle().take(5 * 1024).collect();
    fs::write(lab.path("marker"), b"").expect("lab");
    let out = Command::new(pam_driver())
        .args(["--service", &service.name, "--tty", "pts/1", "--user"])
        .arg(std::ffi::OsString::from_vec(user.clone()))
        .arg("--rhost")
        .arg(std::ffi::OsString::from_vec(rhost.clone()))
        .output()
        .expect("pam-driver");
    assert!(out.status.success(), "pam-driver: {}", String::from_utf8_lossy(&out.stderr));

    let events = json.json_until(WAIT, |e| e.len() >= 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    let mut want_user = String::from("evil\"user\nroot\x1b[31m\\\\xff\\xfe");
    want_user.push_str(&"u".repeat(1024 - PREFIX.len()));
    for e in &events {
        assert_eq!(e["user"], want_user.as_str());
        let got_rhost = e["rhost"].as_str().expect("rhost");
        assert_eq!(got_rhost.len(), notifier_common_data_len() - 1, "rhost is cut to the field size");
        assert!(rhost.starts_with(got_rhost.as_bytes()));
        assert_eq!(e["truncated"], serde_json::json!(["rhost"]));
        assert_eq!(e["peer"], Value::Null, "a host name is never a peer");
    }
    let after = json.lines_until_quiet(Duration::from_millis(500), Duration::from_secs(2));
    assert!(after.is_empty(), "one line per event, got extra: {after:?}");

    let lines = text.lines_until_quiet(Duration::from_millis(700), WAIT);
    assert_eq!(lines.len(), 2, "one text line per event: {lines:#?}");
    for line in &lines {
        // Text escapes the backslash of a literal `\` and of the `\xNN` that marks a non-UTF-8 byte.
        assert!(line.contains(" user=evil\"user\\nroot\\u{1b}[31m\\\\\\\\xff\\\\xfe"), "{line}");
        assert!(line.ends_with("truncated=rhost"), "{line}");
        assert!(!line.chars().any(|c| c.is_control()), "control character in {line:?}");
    }
}

/// DATA_LEN in notifier-common: the payload size of one record, NUL included.
fn notifier_common_data_len() -> usize {
    4096
}

#[test]
fn thousand_sessions_as_fast_as_possible_give_thousand_opens() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntload");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let n = Notifier::watch(&["--json", "--libpam", libpam.to_str().expect("path")]);
    let out = run(Command::new(pam_driver())
        .env("LD_LIBRARY_PATH", &lab.dir)
        .args(["--service", &service.name, "--user", "loaduser", "--rhost", "198.51.100.20"])
        .args(["--count", "1000", "--threads", "2"]));
    eprintln!("driver: {}", out.trim());
    let events = n.json_until(Duration::from_secs(30), |e| of_kind(e, "session_close").len() >= 1000);
    let lost: Vec<&Value> = of_kind(&events, "events_lost");
    let opens = of_kind(&events, "session_open");
    let closes = of_kind(&events, "session_close");
    assert!(lost.is_empty(), "events were lost at 1000 sessions: {lost:?}");
    assert_eq!(opens.len(), 1000, "session_open count");
    assert_eq!(closes.len(), 1000, "session_close count");
    assert!(opens.iter().all(|e| e["service"] == service.name.as_str() && e["user"] == "loaduser"));
    let sessions: std::collections::HashSet<&str> = opens.iter().filter_map(|e| e["session"].as_str()).collect();
    assert_eq!(sessions.len(), 1000, "each session has its own id");
}

#[test]
fn errors_name_the_problem_and_the_fix() {
    if !kernel_tests_enabled() {
        return;
    }
    let out = Command::new(notifier_bin())
        .args(["watch", "--libpam", "/nonexistent/libpam.so.0"])
        .output()
        .expect("notifier");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--libpam /nonexistent/libpam.so.0: cannot open"), "{err}");
    assert!(err.contains("give the path of libpam.so.0"), "{err}");

    // Without privileges: the error names the missing capabilities.
    let user = TestUser::new();
    let out = Command::new("setpriv")
        .args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string(), "--clear-groups", "--"])
        .arg(notifier_bin())
        .arg("watch")
        .output()
        .expect("setpriv notifier");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied") && err.contains("CAP_SYS_ADMIN"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line: {err}");
}
