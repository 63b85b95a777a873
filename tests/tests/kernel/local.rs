//! Real hosts: the sessions that are not remote logins (a real cron job, su, runuser, sudo) are
//! quiet by default and trusted from open to close, an unprivileged child cannot close its
//! parent's session, and sudo inside an SSH login names that login as its origin.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use notifier_tests::*;

use super::{pam_driver, WAIT};

/// `user ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d, removed on drop.
struct Sudoer(PathBuf);

impl Sudoer {
    fn new(user: &str) -> Self {
        let path = PathBuf::from(format!("/etc/sudoers.d/{user}"));
        fs::write(&path, format!("{user} ALL=(ALL) NOPASSWD: ALL\n")).expect("writing a sudoers drop-in");
        run(Command::new("chmod").arg("0440").arg(&path));
        Self(path)
    }
}

impl Drop for Sudoer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A real cron job of `user`, run by Debian's cron. With no cron running, a private `cron -f` runs
/// it at once as an `@reboot` job; with one running, it is a `* * * * *` job (up to a minute).
/// The job file, and the cron this started, go on drop.
struct CronJob {
    file: PathBuf,
    cron: Option<std::process::Child>,
}

impl CronJob {
    fn start(user: &str) -> Self {
        let running =
            Command::new("pgrep").args(["-x", "cron"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        let when = if running { "* * * * *" } else { "@reboot" };
        let file = PathBuf::from(format!("/etc/cron.d/{user}"));
        fs::write(&file, format!("{when} {user} /bin/true\n")).expect("writing a cron.d file");
        let cron = (!running).then(|| {
            // cron runs @reboot jobs only when this file is absent, as at boot.
            let _ = fs::remove_file("/run/crond.reboot");
            Command::new("cron").args(["-f"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("cron")
        });
        Self { file, cron }
    }
}

impl Drop for CronJob {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
        if let Some(mut cron) = self.cron.take() {
            let _ = cron.kill();
            let _ = cron.wait();
        }
    }
}

/// JSON events for `user` until `done`; panics with what arrived if `timeout` passes first.
fn events_of(n: &Notifier, user: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let got = n.json_until(timeout, |all| done(&mine(all, user)));
    let got = mine(&got, user);
    assert!(done(&got), "incomplete after {timeout:?}: {got:#?}\nstderr:\n{}", n.stderr());
    got
}

/// The events that name `user`: as the session's user, the one who asked for it, or the origin's.
fn mine(all: &[Value], user: &str) -> Vec<Value> {
    all.iter().filter(|e| e["user"] == user || e["ruser"] == user || e["origin"]["user"] == user).cloned().collect()
}

fn find<'a>(events: &'a [Value], service: &str, kind: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["service"] == service && e["event"] == kind)
}

fn ssh_ok(cmd: &mut Command, sshd: &Sshd) -> String {
    let out = cmd.output().expect("ssh");
    assert!(out.status.success(), "ssh: {}\nsshd log:\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cron_su_runuser_and_sudo_are_quiet_and_trusted_and_a_new_ssh_source_alerts_once() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let hook = HttpReceiver::start();
    let d =
        DaemonLab::new(|_| format!("[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"", hook.url("/hook")));
    let n = Notifier::run(&d.config);
    let name = user.name.as_str();

    let _cron = CronJob::start(name);
    run(Command::new("su").args(["-s", "/bin/sh", name, "-c", "true"]));
    run(Command::new("runuser").args(["-u", name, "--", "true"]));
    run(Command::new("sudo").args(["-u", name, "true"]));
    let closed = |e: &[Value]| ["cron", "su", "runuser", "sudo"].iter().all(|s| find(e, s, "session_close").is_some());
    let events = events_of(&n, name, Duration::from_secs(75), closed);
    for (service, verdict) in [("cron", "machine"), ("su", "local"), ("runuser", "local"), ("sudo", "local")] {
        let open = find(&events, service, "session_open").unwrap_or_else(|| panic!("no {service} open: {events:#?}"));
        let close = find(&events, service, "session_close").expect("close");
        assert_eq!(open["verdict"], verdict, "{open}");
        assert_eq!(open["alert"], false, "{open}");
        assert_eq!((&open["trusted"], &close["trusted"]), (&Value::Bool(true), &Value::Bool(true)), "{close}");
        assert_eq!(open["session"], close["session"]);
        assert!(open.get("origin").is_none(), "not inside an SSH login: {open}");
    }
    let su = find(&events, "su", "session_open").expect("su");
    assert!(su["reason"].as_str().unwrap().contains("root became"), "{su}");
    assert_eq!(find(&events, "cron", "session_open").unwrap()["tty"], "cron");

    let out = sshd.ssh(name, "127.0.0.1", Some("127.0.0.61"), &[]).arg("true").output().expect("ssh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events_of(&n, name, WAIT, |e| find(e, "sshd", "session_open").is_some());
    assert_eq!(find(&events, "sshd", "session_open").unwrap()["alert"], true);
    // Exactly one alert for this user: the SSH login's, and none after it.
    let ours = |r: &Request| r.json()["event"]["user"] == name || r.json()["event"]["ruser"] == name;
    hook.wait(WAIT, |reqs| reqs.iter().any(ours));
    std::thread::sleep(Duration::from_secs(2));
    let alerts: Vec<Value> = hook.requests().iter().filter(|r| ours(r)).map(Request::json).collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["event"]["service"], "sshd");
    assert_eq!(alerts[0]["event"]["peer"]["ip"], "127.0.0.61");
}

#[test]
fn sudo_inside_an_ssh_login_names_that_login_as_its_origin() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let _sudoer = Sudoer::new(&user.name);
    let d = DaemonLab::new(|_| "[policy]\nalert_on = [\"privilege_change_new_source\"]".into());
    let n = Notifier::run(&d.config);
    let name = user.name.as_str();

    // The client's port, as sshd saw it, is in SSH_CONNECTION.
    let conn = ssh_ok(
        sshd.ssh(name, "127.0.0.1", Some("127.0.0.62"), &[])
            .arg("echo $SSH_CONNECTION; sudo -n true; sudo -n -u root true"),
        &sshd,
    );
    let port: u64 = conn.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("SSH_CONNECTION");
    let events = events_of(&n, name, WAIT, |e| {
        e.iter().filter(|e| e["service"] == "sudo" && e["event"] == "session_close").count() == 2
    });
    let login = find(&events, "sshd", "session_open").expect("the SSH login");
    assert_eq!(login["peer"]["port"], port);
    let sudo: Vec<&Value> = events.iter().filter(|e| e["service"] == "sudo").collect();
    for e in &sudo {
        assert_eq!(e["trusted"], true, "{e}");
        assert_eq!(e["origin"]["peer"]["ip"], "127.0.0.62", "{e}");
        assert_eq!(e["origin"]["peer"]["port"], port, "{e}");
        assert_eq!(e["origin"]["user"], name, "{e}");
        assert_eq!(e["origin"]["session"], login["session"], "{e}");
    }
    let open = sudo.iter().find(|e| e["event"] == "session_open").expect("sudo open");
    assert_eq!(open["user"], "root");
    // The login came from a new source, so its privilege change alerts with the opt-in policy.
    assert_eq!(open["verdict"], "privilege_change_new_source", "{open}");
    assert_eq!(open["alert"], true);
    let reason = open["reason"].as_str().expect("reason");
    assert!(reason.starts_with(&format!("{name} (from 127.0.0.62:{port}) became root with sudo")), "{reason}");

    // The same user again from the same address: the origin is known now.
    ssh_ok(sshd.ssh(name, "127.0.0.1", Some("127.0.0.62"), &[]).arg("sudo -n true"), &sshd);
    let events = events_of(&n, name, WAIT, |e| find(e, "sudo", "session_open").is_some());
    let open = find(&events, "sudo", "session_open").unwrap();
    assert_eq!((&open["verdict"], &open["alert"]), (&Value::from("privilege_change"), &Value::Bool(false)), "{open}");
}

#[test]
fn an_unprivileged_child_cannot_close_or_taint_its_parents_session() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let service = PamService::permit("ntchild");
    let n = Notifier::watch(&["--json", "--libpam", libpam.to_str().expect("path")]);
    let user = unique("ntc");
    let start = Instant::now();
    run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &lab.dir).args([
        "--service",
        &service.name,
        "--user",
        &user,
        "--child-as",
        "65534",
    ]));
    let events = events_of(&n, &user, WAIT, |e| find(e, &service.name, "session_close").is_some());
    // Let anything more that the child caused arrive.
    let late = n.json_until(Duration::from_secs(1), |_| false);
    let all: Vec<Value> = events.into_iter().chain(mine(&late, &user)).collect();
    let kinds: Vec<&str> = all.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["session_open", "session_close"], "{all:#?}");
    assert!(all.iter().all(|e| e["trusted"] == true && e["caller_uid"] == 0), "{all:#?}");
    assert!(start.elapsed() < WAIT);
}
