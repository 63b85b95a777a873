//! A Debian 13 container with systemd as PID 1 (libpam 1.7, OpenSSH 10.0, systemd 257), booted
//! with systemd-nspawn: key logins into its sshd, seen by notifier on the host through both
//! witnesses, whether the container started before notifier (with no session open in it) or
//! after.

use std::{path::Path, process::Command};

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
