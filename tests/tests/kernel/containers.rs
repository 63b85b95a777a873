//! A Debian 13 container with systemd as PID 1 (libpam 1.7, OpenSSH 10.0, systemd 257), booted
//! with systemd-nspawn: key logins into its sshd, seen by notifier on the host through both
//! witnesses, whether the container started before notifier (with no session open in it) or
//! after.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use notifier_tests::*;

use super::WAIT;

/// A key login as `user` into the container's sshd, from `bind`.
fn key_login(c: &Container, key: &Path, user: &str, bind: &str) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "LogLevel=ERROR", "-p", &c.ssh_port.to_string(), "-b", bind])
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .output()
        .expect("ssh");
    assert!(out.status.success(), "ssh into the container from {bind}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn key_logins_into_a_debian_13_container_started_before_or_after_notifier_are_one_event_each() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(pristine) = debian13_root() else { return };
    let lab = Lab::new();
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(lab.path("key")));
    let key = lab.path("key");
    let fingerprint = ssh_keygen_fingerprint(&lab.path("key.pub"));
    let user = unique("ntk");

    // Started before notifier, with no session open in it.
    let mut before = Container::prepare(&pristine, &user, &lab.path("key.pub"));
    before.boot();
    let hook = HttpReceiver::start();
    let d =
        DaemonLab::new(|_| format!("[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"", hook.url("/hook")));
    let n = Notifier::run(&d.config);
    // Started after notifier.
    let mut after = Container::prepare(&pristine, &user, &lab.path("key.pub"));
    after.boot();

    for (c, bind) in [(&before, "127.0.0.81"), (&after, "127.0.0.82")] {
        key_login(c, &key, &user, bind);
        let events = n.json_until(WAIT, |e| {
            e.iter().any(|e| e["user"] == user.as_str() && e["event"] == "session_close" && e["peer"]["ip"] == bind)
        });
        let opens: Vec<&Value> = events
            .iter()
            .filter(|e| e["user"] == user.as_str() && e["event"] == "session_open" && e["service"] == "sshd")
            .collect();
        assert_eq!(opens.len(), 1, "one session_open for the login from {bind}: {events:#?}\n{}", n.stderr());
        let open = opens[0];
        assert_eq!(open["witnesses"], serde_json::json!(["pam", "sshd"]), "{open}");
        assert_eq!(open["auth"]["fingerprint"], fingerprint.as_str(), "{open}");
        assert_eq!(open["peer"]["ip"], bind, "{open}");
        assert_eq!(open["trusted"], true, "{open}");
        // The first login also opens a systemd-user session for user@.service: a machine session.
        let machine: Vec<&Value> =
            events.iter().filter(|e| e["service"] == "systemd-user" && e["user"] == user.as_str()).collect();
        assert!(machine.iter().all(|e| e["alert"] == false), "{machine:#?}");
    }
    // One alert per login from a new address: none for the systemd-user sessions.
    hook.wait(WAIT, |r| r.len() >= 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let alerts: Vec<Value> =
        hook.requests().iter().map(Request::json).filter(|a| a["event"]["user"] == user.as_str()).collect();
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert!(alerts.iter().all(|a| a["event"]["service"] == "sshd"), "{alerts:#?}");
}

/// `systemctl show --value -p PROPERTY notifier` in the container.
fn unit(c: &Container, property: &str) -> String {
    c.exec(&["systemctl", "show", "--value", "-p", property, "notifier"]).trim().to_string()
}

#[test]
fn the_deb_in_a_debian_13_container_starts_alerts_reloads_restarts_and_stops_under_systemd() {
    if !kernel_tests_enabled() {
        return;
    }
    let (Some(pristine), Some(deb)) = (debian13_root(), package_under_test()) else { return };
    let lab = Lab::new();
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(lab.path("key")));
    let user = unique("ntd");
    let mut c = Container::prepare(&pristine, &user, &lab.path("key.pub"));
    std::fs::copy(&deb, c.root.join("var/tmp/notifier.deb")).expect("copying the .deb");
    c.boot();
    c.exec_ok(&["dpkg", "-i", "/var/tmp/notifier.deb"]);

    // A webhook whose secret comes in through LoadCredential=.
    let hook = HttpReceiver::start();
    let secret = "s3cret-from-a-credential";
    std::fs::write(c.root.join("etc/notifier/credentials/hook-secret"), secret).expect("credential");
    std::fs::write(
        c.root.join("etc/notifier/notifier.toml"),
        format!(
            "[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n\
             secret = {{ file = \"${{CREDENTIALS_DIRECTORY}}/notifier_hook-secret\" }}\n\
             [[sink]]\nname = \"journal\"\ntype = \"syslog\"\naddress = \"unix:/dev/log\"\n",
            hook.url("/hook")
        ),
    )
    .expect("config");
    c.exec_ok(&["systemctl", "restart", "notifier"]);
    // Type=notify: `systemctl restart` returned once READY came, with the status text it carries.
    assert_eq!(unit(&c, "Type"), "notify");
    assert_eq!(unit(&c, "ActiveState"), "active");
    assert!(unit(&c, "StatusText").starts_with("watching"), "READY was sent before the unit became active");

    key_login(&c, &lab.path("key"), &user, "127.0.0.84");
    let reqs = hook.wait(WAIT, |r| !r.is_empty());
    let alert =
        reqs.first().unwrap_or_else(|| panic!("no alert; journal:\n{}", c.exec(&["journalctl", "-u", "notifier"])));
    assert_eq!(alert.json()["event"]["user"], user.as_str());
    assert_eq!(alert.json()["event"]["peer"]["ip"], "127.0.0.84");
    let signature = alert.header("x-notifier-signature").expect("signed with the credential's secret");
    assert_eq!(signature, format!("sha256={}", super::alerts::hmac_hex(secret, &alert.body)));
    // The syslog sink on /dev/log: journald parses the program name, facility and severity.
    let deadline = Instant::now() + WAIT;
    let record = loop {
        let json =
            c.exec(&["journalctl", "--no-pager", "-o", "json", "SYSLOG_FACILITY=10", "SYSLOG_IDENTIFIER=notifier"]);
        if let Some(r) = json
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["MESSAGE"].as_str().is_some_and(|m| m.contains(user.as_str())))
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no authpriv record in the journal:\n{json}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (&record["SYSLOG_IDENTIFIER"], &record["PRIORITY"]),
        (&Value::from("notifier"), &Value::from("4")),
        "{record}"
    );
    assert!(record["MESSAGE"].as_str().unwrap().contains("127.0.0.84"), "{record}");
    // `systemctl status` shows the last login; `notifier status` the probes and each sink.
    let deadline = Instant::now() + WAIT;
    while !unit(&c, "StatusText").contains(&format!(" {user} (")) {
        assert!(Instant::now() < deadline, "StatusText: {}", unit(&c, "StatusText"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = unit(&c, "StatusText");
    assert!(text.starts_with("watching logins: ") && text.contains(" events, last "), "{text}");
    let status = c.exec(&["notifier", "status"]);
    assert!(status.starts_with(&format!("notifier is running: pid {},", unit(&c, "MainPID"))), "{status}");
    assert!(status.contains("(libpam)") && status.contains("sink hook: ok, "), "{status}");

    let pid = unit(&c, "MainPID");
    c.exec_ok(&["systemctl", "reload", "notifier"]);
    assert_eq!(
        (unit(&c, "ActiveState"), unit(&c, "MainPID")),
        ("active".to_string(), pid.clone()),
        "reload keeps it running"
    );
    // A bad file on reload: a warning, at the journal's warning priority, and it keeps running.
    let config = c.root.join("etc/notifier/notifier.toml");
    let good = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, "[policy]\nkown_networks = []\n").expect("config");
    c.exec_ok(&["systemctl", "reload", "notifier"]);
    let warnings = c.exec(&["journalctl", "--no-pager", "-p", "warning", "-u", "notifier"]);
    assert!(warnings.contains("Config reload failed") && warnings.contains("kown_networks"), "{warnings}");
    assert!(!warnings.contains("Probes attached"), "info lines are not warnings: {warnings}");
    std::fs::write(&config, &good).expect("config");
    assert_eq!(unit(&c, "MainPID"), pid);

    c.exec_ok(&["kill", "-9", &pid]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(unit(&c, "ActiveState") == "active" && unit(&c, "MainPID") != pid && unit(&c, "MainPID") != "0") {
        assert!(
            Instant::now() < deadline,
            "not restarted after kill -9: {}",
            c.exec(&["systemctl", "status", "notifier"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(unit(&c, "NRestarts"), "1");

    c.exec_ok(&["systemctl", "stop", "notifier"]);
    assert_eq!(unit(&c, "ActiveState"), "inactive");
    // A bad config at start exits 78, and systemd does not try again.
    std::fs::write(&config, "[policy]\nkown_networks = []\n").expect("config");
    let _ = c.exec(&["systemctl", "start", "notifier"]);
    std::thread::sleep(Duration::from_secs(4)); // past RestartSec=2s
    assert_eq!((unit(&c, "ExecMainStatus"), unit(&c, "ActiveState")), ("78".to_string(), "failed".to_string()));
    assert_eq!(unit(&c, "NRestarts"), "0", "no restart after a config error");
    let journal = c.exec(&["journalctl", "--no-pager", "-u", "notifier"]);
    assert!(!journal.contains("already exists but the mode is different"), "{journal}");
    let status = c.exec(&["systemctl", "status", "--no-pager", "notifier"]);
    assert!(!status.contains("mode is different"), "{status}");
}
