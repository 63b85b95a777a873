//! `notifier run`: verdicts, learned history across restarts and `kill -9`, GeoIP, brute force,
//! forged sessions, reverse DNS, and config errors, against real sshd and libpam.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use notifier_tests::*;

use super::{pam_driver, wait_for, WAIT};

fn ssh_login(sshd: &Sshd, user: &str, bind: &str) {
    let out = sshd.ssh(user, "127.0.0.1", Some(bind), &[]).arg("true").output().expect("ssh");
    assert!(
        out.status.success(),
        "ssh from {bind}: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}

#[test]
fn run_allowlisted_then_new_then_known_and_still_known_after_restart() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let d = DaemonLab::new(|_| "[policy]\nknown_networks = [\"127.0.0.1/32\"]".to_string());
    let n = Notifier::run(&d.config);

    ssh_login(&sshd, &user.name, "127.0.0.1");
    let (e, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(e["verdict"], "allowlisted", "{e}");
    assert_eq!(e["alert"], false);
    assert!(e["reason"].as_str().unwrap().contains("127.0.0.1/32"), "{e}");

    ssh_login(&sshd, &user.name, "127.0.0.44");
    let (e, _) = wait_for(&n, &user.name, "session_open");
    let verdict = e["verdict"].as_str().expect("verdict");
    assert!(verdict == "first_login" || verdict.starts_with("new_"), "{e}");
    assert!(e["reason"].as_str().unwrap().contains("127.0.0.44"), "the reason names what was new: {e}");
    assert_eq!(e["alert"], true);
    assert_eq!(e["peer"]["ip"], "127.0.0.44");

    ssh_login(&sshd, &user.name, "127.0.0.44");
    let (e, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(e["verdict"], "known", "{e}");
    assert_eq!(e["alert"], false);
    assert!(n.terminate().success());

    let n = Notifier::run(&d.config);
    ssh_login(&sshd, &user.name, "127.0.0.44");
    let (e, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(e["verdict"], "known", "still known after a restart: {e}");
    // The CLI edits the history while the daemon runs; neither loses the other's updates.
    run(Command::new(notifier_bin())
        .args(["known", "add", "--user", &user.name, "127.0.0.45/32", "--config"])
        .arg(&d.config));
    ssh_login(&sshd, &user.name, "127.0.0.45");
    let (e, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(e["verdict"], "allowlisted", "{e}");
    let history = d.known_json();
    assert_eq!(history["users"][&user.name]["ips"]["127.0.0.44"]["count"], 3, "{history}");
    assert_eq!(history["users"][&user.name]["ips"]["127.0.0.45"]["count"], 1, "{history}");
    assert_eq!(history["allow"]["users"][&user.name], serde_json::json!(["127.0.0.45/32"]), "{history}");
}

#[test]
fn kill_9_in_a_loop_keeps_every_reported_login() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntkill");
    let libpam_lab = Lab::new();
    let libpam = private_libpam(&libpam_lab);
    let d = DaemonLab::new(|_| format!("[capture]\nlibpam = [\"{}\"]", libpam.display()));
    let mut reported: Vec<String> = Vec::new();
    for round in 0..6u32 {
        let n = Notifier::run(&d.config);
        // Sessions from 25 addresses, while the daemon is killed at a different moment each round.
        let mut driver = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for i in $(seq 1 25); do LD_LIBRARY_PATH={dir} {drv} --service {svc} --user killuser --rhost 10.{round}.0.$i --count 2 >/dev/null || exit 1; done",
                dir = libpam_lab.dir.display(),
                drv = pam_driver(),
                svc = service.name
            ))
            .spawn()
            .expect("driver loop");
        let until = Instant::now() + Duration::from_millis(150 + 60 * u64::from(round));
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some(line) = n.next_line(left) else { break };
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            if v["event"] == "session_open" && v["verdict"].is_string() {
                reported.push(v["peer"]["ip"].as_str().expect("ip").to_string());
            }
        }
        n.kill9();
        assert!(driver.wait().expect("driver").success());
    }
    assert!(reported.len() >= 10, "too few logins reported to prove anything: {reported:?}");
    let history = d.known_json();
    let ips = &history["users"]["killuser"]["ips"];
    for ip in &reported {
        assert!(ips.get(ip).is_some(), "{ip} was reported but is not in the history: {ips}");
    }
}

#[test]
fn new_country_carries_country_and_asn() {
    if !kernel_tests_enabled() {
        return;
    }
    use MmdbValue::*;
    let geo_lab = Lab::new();
    let (country_db, asn_db) = (geo_lab.path("country.mmdb"), geo_lab.path("asn.mmdb"));
    let country = |iso: &'static str, name: &'static str| {
        Map(vec![("country", Map(vec![("iso_code", Str(iso)), ("names", Map(vec![("en", Str(name))]))]))])
    };
    write_mmdb(
        &country_db,
        "GeoLite2-Country",
        &[("198.51.100.0/24", country("NZ", "New Zealand")), ("203.0.113.0/24", country("US", "United States"))],
    );
    let asn = |n: u32, org: &'static str| {
        Map(vec![("autonomous_system_number", U32(n)), ("autonomous_system_organization", Str(org))])
    };
    write_mmdb(
        &asn_db,
        "GeoLite2-ASN",
        &[("198.51.100.0/24", asn(64500, "Example NZ")), ("203.0.113.0/24", asn(64501, "Example US"))],
    );

    let service = PamService::permit("ntgeo");
    let libpam_lab = Lab::new();
    let libpam = private_libpam(&libpam_lab);
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nlibpam = [\"{}\"]\n[geoip]\ncountry_db = \"{}\"\nasn_db = \"{}\"",
            libpam.display(),
            country_db.display(),
            asn_db.display()
        )
    });
    let n = Notifier::run(&d.config);
    let login = |rhost: &str| {
        run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &libpam_lab.dir).args([
            "--service",
            &service.name,
            "--user",
            "geouser",
            "--rhost",
            rhost,
        ]));
        wait_for(&n, "geouser", "session_open").0
    };
    let first = login("198.51.100.7");
    assert_eq!(first["verdict"], "first_login", "{first}");
    assert_eq!(first["geo"]["country"], "NZ");
    assert_eq!(first["geo"]["country_name"], "New Zealand");
    assert_eq!(first["asn"]["number"], 64500);
    let moved = login("203.0.113.7");
    assert_eq!(moved["verdict"], "new_country", "{moved}");
    assert_eq!(moved["geo"]["country"], "US");
    assert_eq!(moved["asn"]["number"], 64501);
    assert_eq!(moved["asn"]["org"], "Example US");
    assert!(moved["reason"].as_str().unwrap().contains("new country US"), "{moved}");
}

#[test]
fn six_wrong_passwords_give_one_brute_force_event() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication yes\nMaxStartups 100");
    let user = TestUser::new();
    user.set_password("Correct-horse-battery-7");
    let d = DaemonLab::new(|_| "[brute_force]\nfailures = 5\nwindow_secs = 60".to_string());
    let n = Notifier::run(&d.config);
    for _ in 0..6 {
        let status = sshd.password_ssh(&user.name, "127.0.0.66", "not-the-password").stderr(Stdio::null()).status();
        assert_eq!(status.expect("sshpass").code(), Some(5), "sshpass: wrong password expected");
    }
    let events = n.json_until(WAIT, |e| {
        e.iter().filter(|v| v["event"] == "auth_failure" && v["user"] == user.name.as_str()).count() >= 6
    });
    let later: Vec<Value> = n
        .lines_until_quiet(Duration::from_millis(800), Duration::from_secs(3))
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let brute: Vec<&Value> =
        events.iter().chain(&later).filter(|v| v["event"] == "brute_force" && v["ip"] == "127.0.0.66").collect();
    assert_eq!(brute.len(), 1, "exactly one brute_force event: {brute:?}");
    assert_eq!(brute[0]["count"], 5);
    assert_eq!(brute[0]["users"], serde_json::json!([user.name]));
    assert_eq!(brute[0]["verdict"], "brute_force");
    assert_eq!(brute[0]["alert"], true);

    // The right password from the same address: the login is flagged with the failures before it.
    let status = sshd.password_ssh(&user.name, "127.0.0.66", "Correct-horse-battery-7").status().expect("sshpass");
    assert!(status.success(), "login with the right password failed; sshd log:\n{}", sshd.log());
    let (open, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(open["failures_before"], 6, "{open}");
    assert_eq!(open["auth"]["method"], "password", "{open}");
}

#[test]
fn forged_session_is_forged_and_never_learned() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntforge");
    let user = TestUser::new();
    let d = DaemonLab::new(|_| "".to_string());
    let n = Notifier::run(&d.config);
    let status = Command::new("setpriv")
        .args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string(), "--clear-groups", "--"])
        .args(["pamtester", "-I", "rhost=203.0.113.50", &service.name, &user.name, "open_session", "close_session"])
        .stdout(Stdio::null())
        .status()
        .expect("pamtester");
    assert!(status.success());
    let (e, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(e["verdict"], "forged", "{e}");
    assert_eq!(e["trusted"], false);
    assert_eq!(e["alert"], true);
    assert!(d.known_json()["users"].get(&user.name).is_none(), "a forged login must not be learned");
}

#[test]
fn reverse_dns_names_the_peer_and_a_silent_server_never_holds_events_back() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntdns");
    let libpam_lab = Lab::new();
    let libpam = private_libpam(&libpam_lab);
    let driver = |rhost: &str, user: &str| {
        run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &libpam_lab.dir).args([
            "--service",
            &service.name,
            "--user",
            user,
            "--rhost",
            rhost,
        ]));
    };

    let dns = DnsServer::answering(&[("198.51.100.7".parse().expect("ip"), "bastion.example.test")]);
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nlibpam = [\"{}\"]\n[rdns]\nenabled = true\nservers = [\"127.0.0.1:{}\"]\ntimeout_ms = 2000",
            libpam.display(),
            dns.port
        )
    });
    let n = Notifier::run(&d.config);
    driver("198.51.100.7", "dnsuser");
    let (e, _) = wait_for(&n, "dnsuser", "session_open");
    assert_eq!(e["rdns"], "bastion.example.test", "{e}");
    driver("198.51.100.8", "dnsuser");
    let (e, _) = wait_for(&n, "dnsuser", "session_open");
    assert_eq!(e["rdns"], Value::Null, "no PTR record: {e}");
    drop(n);

    let silent = DnsServer::silent();
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nlibpam = [\"{}\"]\n[rdns]\nenabled = true\nservers = [\"127.0.0.1:{}\"]\ntimeout_ms = 400",
            libpam.display(),
            silent.port
        )
    });
    let n = Notifier::run(&d.config);
    for i in 1..=3 {
        let started = Instant::now();
        driver(&format!("203.0.113.{i}"), "slowdns");
        let (e, seen) = wait_for(&n, "slowdns", "session_open");
        let took = seen - started;
        assert_eq!(e["rdns"], Value::Null);
        assert!(took < Duration::from_millis(400 + 600), "event {i} took {took:?} with a 400 ms DNS timeout");
    }
}

#[test]
fn config_errors_name_the_key_or_path_and_check_config_fails() {
    let lab = Lab::new();
    let cases: &[(&str, &[&str])] = &[
        ("[policy]\nknown_netwroks = [\"10.0.0.0/8\"]\n", &["line 2", "known_netwroks"]),
        ("[policy]\nknown_networks = [\"10.0.0.0/33\"]\n", &["line 2", "10.0.0.0/33"]),
        (
            "[geoip]\nasn_db = \"/nonexistent/GeoLite2-ASN.mmdb\"\n",
            &["geoip.asn_db", "line 2", "/nonexistent/GeoLite2-ASN.mmdb"],
        ),
    ];
    for (text, wants) in cases {
        let path = lab.path("bad.toml");
        fs::write(&path, text).expect("config");
        let out =
            Command::new(notifier_bin()).args(["check-config", "--config"]).arg(&path).output().expect("notifier");
        assert_eq!(out.status.code(), Some(78), "check-config: a config error exits 78 (EX_CONFIG): {text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in *wants {
            assert!(err.contains(want), "{text:?}: {err} lacks {want:?}");
        }
        // The daemon too, before it touches the kernel.
        let out = Command::new(notifier_bin()).args(["run", "--config"]).arg(&path).output().expect("notifier");
        assert_eq!(out.status.code(), Some(78), "run: {text:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A template that renders nothing is caught here, not as a dead letter.
    let path = lab.path("empty.toml");
    fs::write(
        &path,
        "[[sink]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nbody = \"{{ nothing }}\"\n",
    )
    .expect("config");
    let out = Command::new(notifier_bin()).args(["check-config", "--config"]).arg(&path).output().expect("notifier");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("renders an empty text"), "{err}");
    let good = lab.path("good.toml");
    fs::write(&good, "[policy]\nknown_networks = [\"10.0.0.0/8\"]\n").expect("config");
    let out = run(Command::new(notifier_bin()).args(["check-config", "--config"]).arg(&good));
    assert!(out.contains(&format!("known_networks = [\"10.0.0.0/8\"]  # {}", good.display())), "{out}");
    // A drop-in beside it overrides one key, and check-config names where each setting came from.
    let dropins = lab.path("good.d");
    fs::create_dir_all(&dropins).expect("good.d");
    let dropin = dropins.join("10-office.toml");
    fs::write(&dropin, "[policy]\nknown_networks = [\"192.0.2.0/24\"]\n").expect("drop-in");
    let out = run(Command::new(notifier_bin()).args(["check-config", "--config"]).arg(&good));
    assert!(out.contains(&format!("known_networks = [\"192.0.2.0/24\"]  # {}", dropin.display())), "{out}");
    assert!(out.contains("max_per_minute = 10  # default"), "{out}");
    fs::write(&dropin, "[alerts]\nmax_per_minute = 0\n").expect("drop-in");
    let out = Command::new(notifier_bin()).args(["check-config", "--config"]).arg(&good).output().expect("notifier");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("10-office.toml") && err.contains("alerts.max_per_minute"), "{err}");
}
