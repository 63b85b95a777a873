//! A hostile local user: an unprivileged account floods libpam through the real library while real
//! SSH logins happen; none of those logins may go unreported.

use std::{path::PathBuf, process::Child};

use super::*;

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `setpriv` arguments that run the rest of the command as `nobody`.
const AS_NOBODY: [&str; 4] = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"];

/// A copy of pam-driver in `lab` that `nobody` can execute (the build's may be in a directory it
/// cannot enter).
fn pam_driver_for_nobody(lab: &Lab) -> PathBuf {
    let driver = lab.path("pam-driver");
    if !driver.exists() {
        fs::copy(pam_driver(), &driver).expect("copying pam-driver");
        fs::set_permissions(&driver, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    driver
}

/// Runs pam-driver as `nobody` in a network namespace of its own (libpam's audit would resolve a
/// non-IP rhost).
fn flood_as_nobody(lab: &Lab, service: &str, mode: &str, seconds: u32) -> Child {
    let rhost = "h".repeat(4000);
    Command::new("unshare")
        .arg("--net")
        .arg("setpriv")
        .args(AS_NOBODY)
        .arg(pam_driver_for_nobody(lab))
        .args(["--service", service, "--user", "victim", "--rhost", &rhost, "--threads", "2"])
        .args(["--flood", mode, "--seconds", &seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pam-driver flood")
}

#[test]
fn an_unprivileged_flood_hides_no_real_login() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::new();
    let service = PamService::permit("ntblind");
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let fingerprint = ssh_keygen_fingerprint(&sshd.lab.path("client_key.pub"));
    let n = Notifier::watch(&["--json"]);

    let mut logins = Vec::new();
    let mut started = Instant::now();
    for mode in ["set-item", "start"] {
        let flood = flood_as_nobody(&lab, &service.name, mode, 10);
        if mode == "set-item" {
            started = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
        for i in 0..8 {
            let bind = format!("127.0.83.{}", logins.len() + 1);
            let out = sshd
                .ssh(&user.name, "127.0.0.1", Some(&bind), &[])
                .arg("echo \"$SSH_CONNECTION\"")
                .output()
                .expect("ssh");
            assert!(out.status.success(), "login {i} during {mode}; sshd log:\n{}", sshd.log());
            let conn = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let port: u64 = conn.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("client port");
            logins.push((bind, port));
            std::thread::sleep(Duration::from_millis(900));
        }
        let out = flood.wait_with_output().expect("flood");
        eprintln!("{mode} flood: {}", String::from_utf8_lossy(&out.stdout).trim());
        let calls: u64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("calls=")?.parse().ok())
            .unwrap_or_else(|| panic!("{mode} flood made no calls: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(calls > 10_000, "{mode}: the flood ran ({calls} calls)");
    }
    let flood_secs = started.elapsed().as_secs_f64();

    let events = n.json_until(Duration::from_secs(30), |e| {
        of_kind(e, "session_open").iter().filter(|o| o["user"] == user.name.as_str()).count() >= logins.len()
    });
    let opens: Vec<&Value> =
        of_kind(&events, "session_open").into_iter().filter(|o| o["user"] == user.name.as_str()).collect();
    for (bind, port) in &logins {
        let found = opens.iter().find(|o| o["peer"]["ip"] == bind.as_str());
        let o = found.unwrap_or_else(|| panic!("no session_open from {bind}; stderr:\n{}", n.stderr()));
        assert_eq!(o["peer"]["port"], *port, "{o}");
        assert_eq!(o["auth"]["fingerprint"], fingerprint.as_str(), "{o}");
        assert_eq!(o["trusted"], true, "{o}");
        assert_eq!(o["witnesses"], serde_json::json!(["pam", "sshd"]), "{o}");
    }
    assert_eq!(opens.len(), 16, "one session_open per login");
    let trusted_without_user =
        of_kind(&events, "session_open").into_iter().filter(|o| o["trusted"] == true && !o["user"].is_string()).count();
    assert_eq!(trusted_without_user, 0, "no trusted session_open without a user");
    let lost = of_kind(&events, "events_lost");
    let sum = |k: &str| lost.iter().filter_map(|l| l[k].as_u64()).sum::<u64>();
    eprintln!(
        "{} events_lost lines in {flood_secs:.0} s: {} records lost, {} of them over budget, {} trusted",
        lost.len(),
        sum("lost"),
        sum("budget"),
        sum("trusted")
    );
    assert!(!lost.is_empty(), "the flood was over budget and said so");
    assert!(lost.iter().all(|l| l["trusted"] == 0 && l["untrusted"].as_u64() > Some(0)), "{lost:?}");
    assert!(lost.len() as f64 <= flood_secs + 2.0, "{} events_lost lines in {flood_secs:.0} s", lost.len());
}

/// A real shared object of this machine, to copy under a false name.
fn some_library() -> PathBuf {
    ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libm.so.6")
}

#[test]
fn a_fake_sshd_with_its_own_libpam_and_libc_cannot_stop_notifier() {
    if !kernel_tests_enabled() {
        return;
    }
    // As nobody: a program named sshd, from nobody's own directory, mapping files named
    // libpam.so.0 and libc.so.6 that have none of the functions the probes need.
    let lab = Lab::new();
    let fake = lab.path("fake");
    fs::create_dir(&fake).expect("mkdir");
    for (from, to) in
        [(PathBuf::from("/bin/sleep"), "sshd"), (some_library(), "libpam.so.0"), (some_library(), "libc.so.6")]
    {
        fs::copy(&from, fake.join(to)).expect("copy");
    }
    run(Command::new("chown").args(["-R", "65534:65534"]).arg(&fake));
    let preload = format!("{} {}", fake.join("libpam.so.0").display(), fake.join("libc.so.6").display());
    let impostor = Killed(
        Command::new("setpriv")
            .args(AS_NOBODY)
            .arg("env")
            .arg(format!("LD_PRELOAD={preload}"))
            .arg(fake.join("sshd"))
            .arg("120")
            .spawn()
            .expect("impostor"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let maps = format!("/proc/{}/maps", impostor.0.id());
    while !fs::read_to_string(&maps).unwrap_or_default().contains("fake/libc.so.6") {
        assert!(Instant::now() < deadline, "the impostor never mapped its libraries");
        std::thread::sleep(Duration::from_millis(50));
    }

    // notifier starts anyway, attaches only to root's files, and names what it rejected.
    let service = PamService::permit("ntstop");
    let n = Notifier::watch(&["--json", "--service", &service.name]);
    let log = n.stderr();
    let attached = log.lines().find(|l| l.contains("Probes attached.")).expect("attach line").to_string();
    assert!(!attached.contains("fake"), "attached to the impostor's files: {attached}");
    let named = log.lines().find(|l| l.contains("Ignoring a process named sshd")).unwrap_or_else(|| panic!("{log}"));
    assert!(named.contains(&impostor.0.id().to_string()) && named.contains("uid 65534"), "{named}");
    assert!(named.contains("fake/libpam.so.0") && named.contains("fake/libc.so.6"), "{named}");

    // And it works: a PAM session through the system libpam is seen.
    let status = Command::new("pamtester")
        .args(["-I", "rhost=127.0.0.61", &service.name, "root", "open_session", "close_session"])
        .stdout(Stdio::null())
        .status()
        .expect("pamtester");
    assert!(status.success());
    let (e, _) = wait_for(&n, "root", "session_open");
    assert_eq!(e["peer"]["ip"], "127.0.0.61");
}

#[test]
fn a_hostile_user_name_reaches_people_on_one_line_with_no_link() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let http = HttpReceiver::start();
    let scratch = Lab::new();
    let smtp = SmtpServer::start(&scratch);
    let lab = Lab::new();
    let config = lab.path("notifier.toml");
    fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[brute_force]\nfailures = 1\n\
             [[sink]]\nname = \"mail\"\ntype = \"email\"\nserver = \"127.0.0.1\"\nport = {smtp}\ntls = \"none\"\n\
             from = \"notifier@web-test-1.example\"\nto = [\"ops@example.test\"]\n\
             [[sink]]\nname = \"slack\"\ntype = \"slack\"\nurl = \"{base}/slack/T000/B000/XXX\"\n\
             [[sink]]\nname = \"discord\"\ntype = \"discord\"\nurl = \"{base}/discord/api/webhooks/1/tok\"\n",
            state = lab.path("state").display(),
            smtp = smtp.port,
            base = http.url(""),
        ),
    )
    .expect("config");
    let n = Notifier::run(&config);
    // What sshd passes on for an invalid user is whatever the client sent, up to a ':' or '/' (sshd
    // cuts an auth style or role there). OpenSSH's client refuses such names, so paramiko sends it.
    let evil = "x\n[reset your password](www.evil.example) @everyone";
    let script = "import paramiko, socket, sys\n\
        s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), source_address=('127.0.0.71', 0))\n\
        t = paramiko.Transport(s)\n\
        t.start_client(timeout=10)\n\
        try:\n    t.auth_password(sys.argv[2], 'wrong')\nexcept paramiko.AuthenticationException:\n    print('refused')\n\
        t.close()\n";
    let out = run(Command::new("/usr/bin/python3").args(["-c", script, &sshd.port.to_string(), evil]));
    assert_eq!(out.trim(), "refused", "paramiko (install python3-paramiko: cargo xtask setup)");
    let events = n.json_until(WAIT, |e| !of_kind(e, "brute_force").is_empty());
    let brute = of_kind(&events, "brute_force");
    assert_eq!(brute.len(), 1, "{events:?}\n{}", sshd.log());
    assert_eq!(brute[0]["users"][0], evil, "the event itself keeps the exact name");

    let mail = smtp.wait(1, WAIT);
    let (_, body) = mail[0].split_once("\n\n").expect("headers and body");
    let body = body.replace("=\n", "");
    let reqs = http.wait(WAIT, |r| r.len() >= 2);
    let text = |prefix: &str, key: &str| {
        let r = reqs.iter().find(|r| r.path.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {reqs:?}"));
        r.json()[key].as_str().expect("text").to_string()
    };
    let bodies = [("email", body), ("slack", text("/slack", "text")), ("discord", text("/discord", "content"))];
    for (sink, body) in &bodies {
        assert!(body.contains("x\\u{a}[reset your password]"), "{sink}: the name is there, on one line: {body:?}");
        assert!(!body.contains("x\n") && !body.contains("x\r\n"), "{sink}: a line break from the name: {body:?}");
        assert!(!body.contains("www.evil") && !body.contains("](www."), "{sink}: a link from the name: {body:?}");
        assert!(!body.contains("@everyone"), "{sink}: a mention from the name: {body:?}");
    }
}

#[test]
fn a_forged_user_with_a_line_separator_or_bidi_override_stays_one_escaped_text_line() {
    if !kernel_tests_enabled() {
        return;
    }
    let service = PamService::permit("ntbidi");
    let n = Notifier::watch(&["--service", &service.name]);
    let user = "eve\u{2028}root\u{202e}nimda";
    let status = Command::new("setpriv")
        .args(AS_NOBODY)
        .args(["pamtester", "-I", "rhost=127.0.0.72", &service.name, user, "open_session", "close_session"])
        .stdout(Stdio::null())
        .status()
        .expect("pamtester");
    assert!(status.success());
    let line = loop {
        let line = n.next_line(WAIT).unwrap_or_else(|| panic!("no line; stderr:\n{}", n.stderr()));
        if line.contains(" session_open ") {
            break line;
        }
    };
    assert!(line.contains("user=eve\\u{2028}root\\u{202e}nimda"), "{line}");
    assert!(!line.contains('\u{2028}') && !line.contains('\u{202e}'), "{line:?}");
    assert!(line.contains("trusted=no"), "{line}");
    assert_eq!(line.split(' ').count(), line.split_whitespace().count(), "space-free tokens: {line:?}");
}

#[test]
fn a_thousand_idle_metrics_connections_take_nothing_from_alerts() {
    if !kernel_tests_enabled() {
        return;
    }
    // This test's own descriptors: enough for 1,100 connections.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let service = PamService::permit("ntidle");
    let lab = Lab::new();
    let libpam = private_libpam(&lab);
    let http = HttpReceiver::start();
    let port = unused_port();
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nlibpam = [\"{}\"]\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
             [[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
            libpam.display(),
            http.url("/hook")
        )
    });
    // The daemon with systemd's default soft limit of 1,024 descriptors.
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", "--"]).arg(notifier_bin());
    cmd.args(["run", "--json", "--config", d.config.to_str().expect("path")]);
    let n = Notifier::spawn(cmd);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let idle: Vec<std::net::TcpStream> =
        (0..1100).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()).collect();
    assert!(idle.len() >= 1000, "{} connections", idle.len());

    run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &lab.dir).args([
        "--service",
        &service.name,
        "--user",
        "idleuser",
        "--rhost",
        "203.0.113.77",
    ]));
    let (e, _) = wait_for(&n, "idleuser", "session_open");
    assert_eq!((e["verdict"].as_str(), e["alert"].as_bool()), (Some("first_login"), Some(true)), "{e}");
    let reqs = http.wait(WAIT, |r| !r.is_empty());
    assert_eq!(reqs[0].json()["event"]["peer"]["ip"], "203.0.113.77", "the alert was delivered");
    let history = fs::read_to_string(d.state("history.json")).expect("history");
    assert!(history.contains("idleuser") && history.contains("203.0.113.77"), "{history}");
    let log = n.stderr();
    assert!(!log.contains("Cannot write alerts") && !log.contains("Cannot save the login history"), "{log}");
    // Once the idle ones time out, a scrape works.
    drop(idle);
    let text = http_get(port, "/metrics");
    assert!(text.contains("notifier_events_total"), "{text}");
}

#[test]
fn forged_sessions_cannot_mute_the_next_real_login() {
    if !kernel_tests_enabled() {
        return;
    }
    for forged in [12, 100] {
        let service = PamService::permit("ntmute");
        let lab = Lab::new();
        let libpam = private_libpam(&lab);
        let driver = pam_driver_for_nobody(&lab);
        let http = HttpReceiver::start();
        let d = DaemonLab::new(|_| {
            format!(
                "[capture]\nlibpam = [\"{}\"]\n[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
                libpam.display(),
                http.url("/hook")
            )
        });
        let n = Notifier::run(&d.config);
        // As nobody: sessions for the victim's name from made-up addresses, within a minute.
        run(Command::new("setpriv")
            .args(AS_NOBODY)
            .arg(&driver)
            .env("LD_LIBRARY_PATH", &lab.dir)
            .args(["--service", &service.name, "--user", "victim", "--rhost", "198.51.100.{i}"])
            .args(["--count", &forged.to_string()]));
        let events = n.json_until(WAIT, |e| of_kind(e, "session_open").len() >= forged);
        let opens = of_kind(&events, "session_open");
        assert_eq!(opens.len(), forged);
        assert!(opens.iter().all(|e| e["verdict"] == "forged" && e["alert"] == true), "{opens:?}");
        let forged_alerts = http.wait(Duration::from_secs(3), |r| r.len() >= forged.min(10)).len();
        assert!(forged_alerts <= 10, "{forged_alerts} forged alerts");

        // The real login, from a new address: alerted at once, naming its address and verdict.
        let before = http.requests().len();
        run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &lab.dir).args([
            "--service",
            &service.name,
            "--user",
            "victim",
            "--rhost",
            "203.0.113.99",
        ]));
        let done = Instant::now();
        let is_real = |q: &Request| q.json()["event"]["peer"]["ip"] == "203.0.113.99";
        let reqs = http.wait(WAIT, |r| r.iter().skip(before).any(is_real));
        let waited = done.elapsed();
        let real = reqs.iter().skip(before).find(|q| is_real(q)).expect("the real alert");
        let j = real.json();
        assert_eq!((j["verdict"].as_str(), j["event"]["user"].as_str()), (Some("first_login"), Some("victim")), "{j}");
        assert!(j["body"].as_str().is_some_and(|b| b.contains("203.0.113.99")), "the text names the address: {j}");
        assert!(waited < Duration::from_secs(1), "after {forged} forged sessions, the real alert took {waited:?}");
        eprintln!("after {forged} forged sessions ({forged_alerts} forged alerts): the real one in {waited:?}");
    }
}

#[test]
fn a_user_run_sshd_hammered_with_connections_hides_no_real_login() {
    if !kernel_tests_enabled() {
        return;
    }
    // nobody's own sshd on a high port, with its own host key.
    let lab = Lab::new();
    let own = lab.path("own");
    fs::create_dir(&own).expect("mkdir");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(own.join("host_key")));
    let port = unused_port();
    fs::write(
        own.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {}/host_key\nPidFile none\nUsePAM no\nStrictModes no\n",
            own.display()
        ),
    )
    .expect("config");
    run(Command::new("chown").args(["-R", "65534:65534"]).arg(&own));
    let _impostor = Killed(
        Command::new("setpriv")
            .args(AS_NOBODY)
            .args(["/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(own.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .expect("nobody's sshd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nobody's sshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Hammered: connections that send a banner and hang up, as fast as one thread can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = std::io::Write::write_all(&mut s, b"SSH-2.0-hammer\r\n");
                    n += 1;
                }
            }
            n
        })
    };

    let user = TestUser::new();
    let with_pam = Sshd::start("PasswordAuthentication no");
    let without_pam =
        Sshd::launch(SshdSpec { use_pam: false, extra: "PasswordAuthentication no", ..SshdSpec::default() });
    user.authorize_key(&with_pam.lab.path("client_key.pub"));
    let n = Notifier::watch(&["--json"]);
    let hammering = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let mut logins = Vec::new();
    for (i, (sshd, witnesses)) in
        [(&with_pam, vec!["pam", "sshd"]), (&without_pam, vec!["sshd"])].into_iter().enumerate()
    {
        for j in 0..4 {
            let bind = format!("127.0.84.{}", i * 10 + j + 1);
            let mut ssh = sshd.ssh_with_key(&with_pam.client_key, &user.name, "127.0.0.1", Some(&bind), &[]);
            let out = run(ssh.arg("echo \"$SSH_CONNECTION\""));
            let port: u64 = out.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("client port");
            logins.push((bind, port, witnesses.clone()));
        }
    }
    std::thread::sleep(Duration::from_secs(4).saturating_sub(hammering.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hammered = hammer.join().expect("hammer");
    eprintln!("{hammered} connections to nobody's sshd in {:?}", hammering.elapsed());
    assert!(hammered > 200, "{hammered} connections to nobody's sshd");
    let events = n.json_until(WAIT, |e| {
        of_kind(e, "session_open").iter().filter(|o| o["user"] == user.name.as_str()).count() >= logins.len()
    });
    for (bind, port, witnesses) in &logins {
        let o = of_kind(&events, "session_open")
            .into_iter()
            .find(|o| o["peer"]["ip"] == bind.as_str())
            .unwrap_or_else(|| panic!("no session_open from {bind} ({hammered} hammering connections)"));
        assert_eq!((o["user"].as_str(), &o["peer"]["port"]), (Some(user.name.as_str()), &Value::from(*port)), "{o}");
        assert_eq!(o["witnesses"], serde_json::json!(witnesses), "{o}");
        assert_eq!(o["trusted"], true, "{o}");
    }
    // nobody's sshd's connections are not followed: no event names its port's peers.
    assert!(of_kind(&events, "auth_failure").iter().all(|e| e["comm"] != "sshd" || e["trusted"] == true));
}
