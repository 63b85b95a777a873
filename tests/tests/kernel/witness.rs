//! The sshd witness against real sshd: OpenSSH 9.2 (the system's) and 10.0 (bookworm-backports,
//! unpacked by `cargo xtask setup`), with `UsePAM no` and `yes`. Each test binds its clients to
//! its own 127.0.N.x addresses and counts only the events from them.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use notifier_tests::*;

use super::ppid_of;

/// Events whose peer is one of `ips`, until `done` says the set is complete or `timeout` passes.
fn events_from(n: &Notifier, ips: &[String], timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut mine = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&mine) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Some(line) = n.next_line(left) else { break };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("invalid JSON {line:?}: {e}"));
        if v["peer"]["ip"].as_str().is_some_and(|ip| ips.iter().any(|i| i == ip)) {
            mine.push(v);
        }
    }
    mine
}

fn count(events: &[Value], kind: &str, ip: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind && e["peer"]["ip"] == ip).count()
}

fn ssh_ok(cmd: &mut Command, sshd: &Sshd, what: &str) {
    let out = cmd.output().expect("ssh");
    assert!(out.status.success(), "{what}: {}\nsshd log:\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
}

/// A client that sends its identification string and hangs up (a banner grab).
fn banner_only(port: u16, bind: &str) {
    let script = format!(
        "import socket,time\ns=socket.socket()\ns.bind(('{bind}',0))\ns.connect(('127.0.0.1',{port}))\n\
         s.recv(256)\ns.send(b'SSH-2.0-scanner\\r\\n')\ntime.sleep(0.3)\ns.close()\n"
    );
    run(Command::new("python3").arg("-c").arg(script));
}

/// An ssh client killed with SIGKILL while it is still negotiating.
fn killed_client(sshd: &Sshd, user: &str, bind: &str) {
    let mut child =
        sshd.ssh(user, "127.0.0.1", Some(bind), &[]).arg("true").stderr(Stdio::null()).spawn().expect("ssh");
    std::thread::sleep(Duration::from_millis(30));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sshd_without_pam_is_seen_by_the_sshd_witness_alone() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::launch(SshdSpec { use_pam: false, extra: "PasswordAuthentication no", ..SshdSpec::default() });
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(sshd.lab.path("wrong_key")));
    // No --sshd: the system sshd is found by the standard paths.
    let n = Notifier::watch(&["--json"]);
    assert!(n.stderr().contains("sshd witness attached"), "{}", n.stderr());
    let ip = |i: u8| format!("127.0.72.{i}");
    let ips: Vec<String> = (1..=5).map(ip).collect();

    let mut login = sshd
        .ssh(&user.name, "127.0.0.1", Some(&ip(1)), &[])
        .arg("echo $PPID $SSH_CONNECTION; sleep 1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut first = String::new();
    BufReader::new(login.stdout.take().expect("stdout")).read_line(&mut first).expect("ssh output");
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "remote $PPID $SSH_CONNECTION: {first:?}; sshd log:\n{}", sshd.log());
    // The shell's parent is the post-auth child; its parent is sshd's per-connection process.
    let post_auth: u64 = fields[0].parse().expect("pid");
    let connection_pid = ppid_of(post_auth).expect("post-auth child alive");
    let client_port: u64 = fields[2].parse().expect("port");
    assert!(login.wait().expect("ssh").success());

    let wrong = sshd
        .ssh_with_key(&sshd.lab.path("wrong_key"), &user.name, "127.0.0.1", Some(&ip(2)), &[])
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .expect("ssh");
    assert!(!wrong.success(), "the wrong key must be refused");
    let unknown = sshd.ssh("nosuchuser-ntw", "127.0.0.1", Some(&ip(3)), &[]).arg("true").stderr(Stdio::null()).status();
    assert!(!unknown.expect("ssh").success());
    banner_only(sshd.port, &ip(4));
    killed_client(&sshd, &user.name, &ip(5));

    let mut events = events_from(&n, &ips, Duration::from_secs(20), |e| {
        count(e, "session_close", &ip(1)) == 1 && count(e, "auth_failure", &ip(2)) == 1
    });
    // Late events, if any (there should be none), within two more seconds.
    events.extend(events_from(&n, &ips, Duration::from_secs(2), |_| false));
    let opens: Vec<&Value> = events.iter().filter(|e| e["event"] == "session_open").collect();
    assert_eq!(opens.len(), 1, "one login, one session_open: {events:#?}");
    let open = opens[0];
    assert_eq!(open["user"], user.name.as_str(), "{open}");
    assert_eq!(open["uid"], user.uid, "{open}");
    assert_eq!(open["peer"]["ip"], ip(1).as_str());
    assert_eq!(open["peer"]["port"], client_port, "the client's own port: {open}");
    assert_eq!(open["pid"], connection_pid, "sshd's per-connection process: {open}");
    assert_eq!(open["witnesses"], serde_json::json!(["sshd"]), "{open}");
    assert_eq!(open["service"], "sshd");
    assert_eq!(open["trusted"], true);
    assert!(open.get("missed_by").is_none(), "this sshd does not use PAM: {open}");
    let close: Vec<&Value> = events.iter().filter(|e| e["event"] == "session_close").collect();
    assert_eq!(close.len(), 1, "{events:#?}");
    assert_eq!(close[0]["session"], open["session"]);

    let failures: Vec<&Value> = events.iter().filter(|e| e["event"] == "auth_failure").collect();
    let wrong_key: Vec<&&Value> = failures.iter().filter(|e| e["peer"]["ip"] == ip(2).as_str()).collect();
    assert_eq!(wrong_key.len(), 1, "the wrong key is one auth_failure with the peer: {events:#?}");
    assert!(wrong_key[0]["peer"]["port"].as_u64().is_some_and(|p| p > 0), "{}", wrong_key[0]);
    assert_eq!(wrong_key[0]["witnesses"], serde_json::json!(["sshd"]));
    for i in 3..=5 {
        assert_eq!(count(&events, "session_open", &ip(i)), 0, "no session_open from {}: {events:#?}", ip(i));
    }
}

/// One connection of each kind; returns the bind address of each, by name.
fn connections(sshd: &Sshd, user: &TestUser, net: u8) -> BTreeMap<&'static str, (String, &'static str)> {
    let ip = |i: u8| format!("127.0.{net}.{i}");
    let mut cases = BTreeMap::new();
    let name = user.name.as_str();

    ssh_ok(sshd.ssh(name, "127.0.0.1", Some(&ip(1)), &[]).arg("true"), sshd, "key login");
    cases.insert("key login", (ip(1), "user"));

    // Three sessions over one multiplexed connection.
    let control = sshd.lab.path("mux");
    let control = format!("ControlPath={}", control.display());
    let master = ["-o", "ControlMaster=yes", "-o", "ControlPersist=2", "-o", &control];
    ssh_ok(sshd.ssh(name, "127.0.0.1", Some(&ip(2)), &master).arg("true"), sshd, "mux master");
    for _ in 0..2 {
        ssh_ok(sshd.ssh(name, "127.0.0.1", Some(&ip(2)), &["-o", &control]).arg("true"), sshd, "mux session");
    }
    cases.insert("multiplexed", (ip(2), "user"));

    let mut sftp = Command::new("sftp");
    sftp.args(["-q", "-b", "-", "-i"])
        .arg(&sshd.client_key)
        .args(["-o", "StrictHostKeyChecking=no", "-o"])
        .arg(format!("UserKnownHostsFile={}", sshd.lab.path("known_hosts").display()))
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "KexAlgorithms=curve25519-sha256"])
        .args(["-o", &format!("BindAddress={}", ip(3)), "-P", &sshd.port.to_string()])
        .arg(format!("{name}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = sftp.spawn().expect("sftp");
    {
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(b"pwd\n").expect("sftp batch");
    }
    assert!(child.wait().expect("sftp").success(), "sftp; sshd log:\n{}", sshd.log());
    cases.insert("sftp", (ip(3), "user"));

    // -N: no session at all; and root's, which OpenSSH 9.2 does not setlogin for.
    for (i, who, what) in [(4, name, "-N"), (5, "root", "root -N")] {
        let mut child = sshd.ssh(who, "127.0.0.1", Some(&ip(i)), &["-N"]).spawn().expect("ssh -N");
        std::thread::sleep(Duration::from_millis(2_000));
        assert!(child.try_wait().expect("ssh").is_none(), "{what} ended early; sshd log:\n{}", sshd.log());
        let _ = child.kill();
        let _ = child.wait();
        cases.insert(what, (ip(i), if who == "root" { "root" } else { "user" }));
    }
    ssh_ok(sshd.ssh("root", "127.0.0.1", Some(&ip(6)), &[]).arg("true"), sshd, "root login");
    cases.insert("root command", (ip(6), "root"));
    cases
}

#[test]
fn each_connection_is_one_event_on_openssh_9_2_and_10_0_with_and_without_pam() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut versions = vec![OpenSsh::System];
    if openssh10().is_some() {
        versions.push(OpenSsh::V10);
    }
    let mut net = 80;
    for openssh in versions {
        for use_pam in [true, false] {
            net += 1;
            let sshd =
                Sshd::launch(SshdSpec { openssh, use_pam, extra: "PasswordAuthentication no", ..SshdSpec::default() });
            let user = TestUser::new();
            user.authorize_key(&sshd.lab.path("client_key.pub"));
            let mut args = vec!["--json".to_string()];
            args.extend(sshd.notifier_args());
            let n = Notifier::watch(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let cases = connections(&sshd, &user, net);
            let ips: Vec<String> = cases.values().map(|(ip, _)| ip.clone()).collect();
            let mut events = events_from(&n, &ips, Duration::from_secs(20), |e| {
                ips.iter().all(|ip| count(e, "session_close", ip) >= 1)
            });
            events.extend(events_from(&n, &ips, Duration::from_secs(1), |_| false));
            let witnesses = if use_pam { serde_json::json!(["pam", "sshd"]) } else { serde_json::json!(["sshd"]) };
            let label = format!("{openssh:?} UsePAM {}", if use_pam { "yes" } else { "no" });
            for (what, (ip, who)) in &cases {
                let opens: Vec<&Value> =
                    events.iter().filter(|e| e["event"] == "session_open" && e["peer"]["ip"] == ip.as_str()).collect();
                assert_eq!(opens.len(), 1, "{label}, {what}: one session_open per connection: {events:#?}");
                let open = opens[0];
                let (name, uid) = if *who == "root" { ("root", 0) } else { (user.name.as_str(), user.uid) };
                assert_eq!(open["user"], name, "{label}, {what}: {open}");
                assert_eq!(open["witnesses"], witnesses, "{label}, {what}: {open}");
                assert!(open.get("missed_by").is_none(), "{label}, {what}: {open}");
                if !use_pam {
                    assert_eq!(open["uid"], uid, "{label}, {what}: {open}");
                }
                assert!(open["peer"]["port"].as_u64().is_some_and(|p| p > 0), "{label}, {what}: {open}");
                assert_eq!(count(&events, "session_close", ip), 1, "{label}, {what}: {events:#?}");
                assert_eq!(count(&events, "auth_failure", ip), 0, "{label}, {what}: {events:#?}");
            }
            drop(n);
        }
    }
}

/// A shared object that, preloaded into sshd, answers `pam_open_session` and `pam_close_session`
/// itself without calling libpam: the classic way a tampered host skips the PAM session stack
/// (and whatever it logs or enforces) while sshd still logs the user in.
fn pam_session_skipper(lab: &Lab) -> std::path::PathBuf {
    let source = lab.path("skip_pam_session.c");
    std::fs::write(
        &source,
        "int pam_open_session(void *pamh, int flags) { (void)pamh; (void)flags; return 0; }\n\
         int pam_close_session(void *pamh, int flags) { (void)pamh; (void)flags; return 0; }\n",
    )
    .expect("writing the shim");
    let object = lab.path("skip_pam_session.so");
    run(Command::new("gcc").args(["-shared", "-fPIC", "-o"]).arg(&object).arg(&source));
    object
}

#[test]
fn run_flags_an_sshd_that_skips_pam_and_counts_failures_without_pam() {
    if !kernel_tests_enabled() {
        return;
    }
    let hook = HttpReceiver::start();
    let d = DaemonLab::new(|_| {
        format!(
            "[alerts]\nretry_initial_ms = 200\n[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
            hook.url("/hook")
        )
    });
    let shim_lab = Lab::new();
    let shim = pam_session_skipper(&shim_lab);
    let tampered = Sshd::launch(SshdSpec {
        use_pam: true,
        extra: "PasswordAuthentication no",
        env: vec![("LD_PRELOAD".into(), shim.display().to_string())],
        ..SshdSpec::default()
    });
    let no_pam = Sshd::launch(SshdSpec { use_pam: false, extra: "PasswordAuthentication no", ..SshdSpec::default() });
    let user = TestUser::new();
    user.authorize_key(&tampered.lab.path("client_key.pub"));
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(no_pam.lab.path("wrong_key")));
    let n = Notifier::run(&d.config);

    // The tampered sshd: libpam's pam_start runs, its session stack does not.
    let ip = "127.0.74.1";
    ssh_ok(tampered.ssh(&user.name, "127.0.0.1", Some(ip), &[]).arg("true"), &tampered, "login");
    let events = events_from(&n, &[ip.to_string()], Duration::from_secs(20), |e| count(e, "session_open", ip) == 1);
    let open = events.iter().find(|e| e["event"] == "session_open").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(open["user"], user.name.as_str(), "{open}");
    assert_eq!(open["witnesses"], serde_json::json!(["sshd"]), "{open}");
    assert_eq!(open["missed_by"], serde_json::json!(["pam"]), "{open}");
    assert_eq!(open["verdict"], "pam_bypassed", "{open}");
    assert_eq!(open["alert"], true, "{open}");
    let reqs = hook.wait(WAIT_ALERT, |r| !r.is_empty());
    assert_eq!(reqs.len(), 1, "one alert: {reqs:?}");
    let alert = reqs[0].json();
    assert_eq!(alert["verdict"], "pam_bypassed", "{alert}");
    assert_eq!(alert["event"]["peer"]["ip"], ip, "{alert}");

    // Six wrong keys from one address at an sshd without PAM: six auth_failures, one brute_force.
    let attacker = "127.0.74.66";
    for _ in 0..6 {
        let status = no_pam
            .ssh_with_key(&no_pam.lab.path("wrong_key"), &user.name, "127.0.0.1", Some(attacker), &[])
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .expect("ssh");
        assert!(!status.success());
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.iter().filter(|e: &&Value| e["event"] == "brute_force").count() == 0 {
        let left =
            deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| panic!("no brute_force: {seen:#?}"));
        let Some(line) = n.next_line(left) else { continue };
        let v: Value = serde_json::from_str(&line).expect("JSON");
        if v["peer"]["ip"] == attacker || v["ip"] == attacker {
            seen.push(v);
        }
    }
    let failures: Vec<&Value> = seen.iter().filter(|e| e["event"] == "auth_failure").collect();
    assert!(failures.len() >= 5, "{seen:#?}");
    assert!(failures.iter().all(|e| e["witnesses"] == serde_json::json!(["sshd"])), "{seen:#?}");
    let brute = seen.iter().find(|e| e["event"] == "brute_force").expect("brute_force");
    assert!(brute["count"].as_u64().is_some_and(|c| c >= 5), "{brute}");
}

const WAIT_ALERT: Duration = Duration::from_secs(15);
