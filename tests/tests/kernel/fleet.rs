//! Fleet mode against a real NATS server (nats-server 2.15.1 with JetStream on loopback): many
//! daemons, each a host with its own `host`, state directory and private libpam, share one event
//! stream and one learned history.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

/// One simulated host: a daemon with its own libpam copy, state and name.
struct Host {
    name: String,
    d: DaemonLab,
    n: Option<Notifier>,
    /// Every event this host's daemon printed, in order.
    printed: Vec<Value>,
}

impl Host {
    fn new(name: &str, fleet: &str, extra: &str) -> Host {
        let d = DaemonLab::new(|lab| {
            let libpam = private_libpam(lab);
            format!(
                "host = \"{name}\"\n{extra}\n[capture]\nlibpam = [\"{}\"]\nsshd_witness = false\n[fleet]\n{fleet}\n",
                libpam.display()
            )
        });
        Host { name: name.into(), d, n: None, printed: Vec::new() }
    }

    fn start(&mut self) {
        self.n = Some(Notifier::run(&self.d.config));
    }

    fn daemon(&self) -> &Notifier {
        self.n.as_ref().expect("daemon running")
    }

    /// `pam-driver` through this host's libpam: one session of `user` from `ip`.
    fn login(&self, service: &str, user: &str, ip: &str) -> std::process::Child {
        Command::new(pam_driver())
            .env("LD_LIBRARY_PATH", &self.d.lab.dir)
            .args(["--service", service, "--user", user, "--rhost", ip, "--count", "1"])
            .stdout(Stdio::null())
            .spawn()
            .expect("pam-driver")
    }

    /// Reads this host's output until its session_open of `user` from `ip`.
    fn wait_open(&mut self, user: &str, ip: &str) -> Value {
        // Longer than a claim may wait on a cluster between leaders.
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_default();
            let n = self.daemon();
            let line = n.next_line(left).unwrap_or_else(|| {
                panic!("{}: no session_open of {user} from {ip}; stderr:\n{}", self.name, n.stderr())
            });
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            self.printed.push(v.clone());
            if v["event"] == "session_open" && v["user"] == user && v["peer"]["ip"] == ip {
                return v;
            }
        }
    }

    /// Reads what is left of the output until it is quiet.
    fn drain(&mut self) {
        if let Some(n) = &self.n {
            for line in n.lines_until_quiet(Duration::from_millis(700), WAIT) {
                self.printed.push(serde_json::from_str(&line).expect("JSON line"));
            }
        }
    }
}

fn fleet_init(config: &std::path::Path) {
    run(Command::new(notifier_bin()).args(["fleet", "init", "--config"]).arg(config));
}

fn fleet_watch(config: &std::path::Path) -> Notifier {
    let mut cmd = Command::new(notifier_bin());
    cmd.args(["fleet", "watch", "--json", "--config"]).arg(config);
    Notifier::spawn(cmd)
}

/// (host, session, event) of every login event in `events`.
fn keys_of(events: &[Value]) -> Vec<(String, String, String)> {
    let mut k: Vec<_> = events
        .iter()
        .filter(|e| e["session"].is_string())
        .map(|e| {
            (
                e["host"].as_str().unwrap_or("").into(),
                e["session"].as_str().unwrap_or("").into(),
                e["event"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    k.sort();
    k
}

/// Reads the fleet watch until it has shown every event in `want` (or `WAIT` passes), then a
/// little longer, so that a duplicate would show.
fn watch_until(w: &Notifier, want: &[(String, String, String)]) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let have = keys_of(&got);
        if want.iter().all(|k| have.contains(k)) {
            break;
        }
        if let Some(line) = w.next_line(Duration::from_millis(200)) {
            got.push(serde_json::from_str(&line).expect("JSON line"));
        }
    }
    for line in w.lines_until_quiet(Duration::from_secs(2), WAIT) {
        got.push(serde_json::from_str(&line).expect("JSON line"));
    }
    got
}

#[test]
fn twenty_hosts_one_new_source_one_alert_and_the_watch_shows_every_event_once() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(server) = NatsServer::start("") else { return };
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntfleet");
    let fleet = format!("servers = [\"{}\"]", server.url());
    let sink = hook_sink(&hook);
    let mut hosts: Vec<Host> = (1..=20).map(|i| Host::new(&format!("web-{i}"), &fleet, &sink)).collect();
    fleet_init(&hosts[0].d.config);
    let watch = fleet_watch(&hosts[0].d.config);
    for h in &mut hosts {
        h.start();
    }

    // One user, one new address, all 20 hosts at once.
    let drivers: Vec<_> = hosts.iter().map(|h| h.login(&service.name, "fleetuser", "10.77.0.1")).collect();
    for mut d in drivers {
        assert!(d.wait().expect("pam-driver").success());
    }
    let opens: Vec<Value> = hosts.iter_mut().map(|h| h.wait_open("fleetuser", "10.77.0.1")).collect();
    let alerting: Vec<&Value> = opens.iter().filter(|e| e["alert"] == true).collect();
    assert_eq!(alerting.len(), 1, "exactly one host alerts: {opens:#?}");
    let winner = alerting[0]["host"].as_str().expect("host").to_string();
    assert_eq!(alerting[0]["verdict"], "first_login", "{:#}", alerting[0]);
    assert_eq!(alerting[0]["fleet"]["state"], "claimed");
    for e in opens.iter().filter(|e| e["alert"] != true) {
        assert_eq!(e["verdict"], "known", "{e:#}");
        assert_eq!(e["fleet"]["first_host"], winner.as_str(), "{e:#}");
        assert!(e["reason"].as_str().unwrap_or("").contains(&winner), "the reason names the first host: {e:#}");
    }
    let delivered = hook.wait(WAIT, |r| !r.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    let delivered = [delivered, hook.requests()].concat();
    let logins: Vec<Value> = hook.requests().iter().map(Request::json).filter(|b| b["kind"] == "login").collect();
    assert_eq!(logins.len(), 1, "one alert fleet-wide: {} requests, {logins:#?}", delivered.len());
    assert_eq!(
        (logins[0]["host"].as_str(), logins[0]["event"]["peer"]["ip"].as_str()),
        (Some(winner.as_str()), Some("10.77.0.1"))
    );

    // Two hosts at once from another new address: one alert between them.
    let pair = [3, 4];
    let drivers: Vec<_> = pair.iter().map(|&i| hosts[i].login(&service.name, "fleetuser", "10.77.1.2")).collect();
    for mut d in drivers {
        assert!(d.wait().expect("pam-driver").success());
    }
    let opens: Vec<Value> = pair.iter().map(|&i| hosts[i].wait_open("fleetuser", "10.77.1.2")).collect();
    assert_eq!(opens.iter().filter(|e| e["alert"] == true).count(), 1, "{opens:#?}");
    let alert = opens.iter().find(|e| e["alert"] == true).expect("one alert");
    assert_eq!(alert["verdict"], "new_network", "the user and the fleet knew the user, not 10.77.1.0/24: {alert:#}");
    let loser = opens.iter().find(|e| e["alert"] != true).expect("one known");
    assert_eq!(
        (loser["verdict"].as_str(), loser["fleet"]["first_host"].as_str()),
        (Some("known"), alert["host"].as_str())
    );
    hook.wait(WAIT, |r| r.len() >= 2);
    std::thread::sleep(Duration::from_secs(1));
    let logins = hook.requests().iter().map(Request::json).filter(|b| b["kind"] == "login").count();
    assert_eq!(logins, 2, "one more alert, not two");

    // The fleet watch showed every event of every host, exactly once, with its host.
    for h in &mut hosts {
        h.drain();
    }
    let printed: Vec<Value> = hosts.iter().flat_map(|h| h.printed.clone()).collect();
    let want = keys_of(&printed);
    assert!(want.len() >= 22, "{want:?}");
    let shown = watch_until(&watch, &want);
    assert_eq!(keys_of(&shown), want, "each event once in the fleet watch");
    let per_host: BTreeMap<&str, usize> = shown.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["host"].as_str().unwrap_or("")).or_default() += 1;
        m
    });
    assert_eq!(per_host.len(), 20, "{per_host:?}");
    assert_schema_valid(None, &shown);
}

/// A `[[sink]]` named `hook` that posts to `hook`'s `/hook`.
fn hook_sink(hook: &HttpReceiver) -> String {
    format!("[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n", hook.url("/hook"))
}

/// The login alerts a webhook receiver got, by IP.
fn alerts_by_ip(hook: &HttpReceiver) -> BTreeMap<String, usize> {
    hook.requests().iter().map(Request::json).filter(|b| b["kind"] == "login").fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b["event"]["peer"]["ip"].as_str().unwrap_or("").to_string()).or_default() += 1;
        m
    })
}

#[test]
fn events_reach_the_stream_once_across_daemon_and_server_restarts_and_offline_verdicts_say_so() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(mut server) = NatsServer::start("") else { return };
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntfleetr");
    let fleet = format!("servers = [\"{}\"]\nunreachable_alert_secs = 3", server.url());
    let sink = hook_sink(&hook);
    let mut a = Host::new("web-a", &fleet, &sink);
    let mut b = Host::new("web-b", &fleet, &sink);
    fleet_init(&a.d.config);
    let watch = fleet_watch(&a.d.config);
    a.start();
    b.start();
    let login = |h: &mut Host, ip: &str| {
        assert!(h.login(&service.name, "roamer", ip).wait().expect("pam-driver").success());
        h.wait_open("roamer", ip)
    };
    login(&mut a, "10.78.0.1");
    login(&mut b, "10.78.0.2");
    // A daemon restart: its stopping notice goes out too.
    a.drain();
    assert!(a.n.take().expect("daemon").terminate().success());
    a.start();
    login(&mut a, "10.78.0.3");

    // The server is down: verdicts are local and say so; both hosts alert on the same new address.
    server.kill9();
    let offline: Vec<Value> =
        [(&mut a, "10.78.0.4"), (&mut b, "10.78.0.5")].into_iter().map(|(h, ip)| login(h, ip)).collect();
    let both: Vec<Value> = [&mut a, &mut b].into_iter().map(|h| login(h, "10.78.0.9")).collect();
    for e in offline.iter().chain(&both) {
        assert_eq!(e["fleet"]["state"], "offline", "{e:#}");
        assert_eq!(e["alert"], true, "{e:#}");
        assert!(e["reason"].as_str().unwrap_or("").contains("fleet unreachable: other hosts may alert too"), "{e:#}");
    }
    assert!(a.daemon().wait_stderr("Disconnected from the fleet servers", WAIT), "{}", a.daemon().stderr());
    let health = hook.wait(WAIT, |r| {
        r.iter()
            .any(|q| q.json()["kind"] == "health" && q.json()["reason"].as_str().unwrap_or("").contains("unreachable"))
    });
    assert!(!health.is_empty(), "a health alert says the fleet is unreachable");
    server.restart();
    assert!(a.daemon().wait_stderr("reachable again", Duration::from_secs(30)), "{}", a.daemon().stderr());
    login(&mut b, "10.78.0.6");

    // The claims made offline settled: one first host each, and nothing alerted twice.
    let list =
        || run(Command::new(notifier_bin()).args(["known", "list", "--fleet", "--json", "--config"]).arg(&b.d.config));
    let deadline = Instant::now() + WAIT;
    let mut ips: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        let entries: Vec<Value> = serde_json::from_str(&list()).expect("known list --fleet --json");
        ips = entries.iter().filter_map(|e| e["entry"].as_str()?.strip_prefix("ip ").map(String::from)).collect();
        if ips.len() == 7 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ips.len(), 7, "every address claimed once: {ips:?}");
    let alerts = alerts_by_ip(&hook);
    assert_eq!(alerts.get("10.78.0.9"), Some(&2), "offline, both hosts alerted: {alerts:?}");
    assert!(alerts.iter().filter(|(ip, _)| *ip != "10.78.0.9").all(|(_, n)| *n == 1), "{alerts:?}");

    // The watch, through the server's restart, showed each event once, with its host.
    a.drain();
    b.drain();
    let printed: Vec<Value> = a.printed.iter().chain(&b.printed).cloned().collect();
    let want = keys_of(&printed);
    let shown = watch_until(&watch, &want);
    assert_eq!(keys_of(&shown), want, "each event once in the fleet watch");
    assert!(
        shown.iter().any(|e| e["event"] == "health"
            && e["host"] == "web-a"
            && e["reason"].as_str().unwrap_or("").contains("stopping")),
        "the health events are in the stream too"
    );
}

#[test]
fn a_crash_between_claim_and_alert_sends_the_alert_once_after_the_restart() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(server) = NatsServer::start("") else { return };
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntfleetc");
    let fleet = format!("servers = [\"{}\"]", server.url());
    let sink = hook_sink(&hook);
    let mut a = Host::new("web-a", &fleet, &sink);
    let mut b = Host::new("web-b", &fleet, &sink);
    fleet_init(&a.d.config);
    let mut cmd = Command::new(notifier_bin());
    cmd.args(["run", "--json", "--config"]).arg(&a.d.config).env("NOTIFIER_FAILPOINT", "fleet-claimed");
    let mut crashing = Notifier::spawn(cmd);
    assert!(a.login(&service.name, "crashy", "10.79.0.1").wait().expect("pam-driver").success());
    let deadline = Instant::now() + WAIT;
    while crashing.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!crashing.alive(), "the failpoint killed the daemon after its claim");
    assert!(crashing.stderr().contains("Failpoint reached"), "{}", crashing.stderr());
    std::thread::sleep(Duration::from_secs(1));
    assert!(alerts_by_ip(&hook).is_empty(), "no alert before the restart");

    a.start();
    hook.wait(WAIT, |r| !r.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(alerts_by_ip(&hook).get("10.79.0.1"), Some(&1), "the won claim's alert, once");
    // Another restart sends nothing more; another host knows the address from web-a.
    assert!(a.n.take().expect("daemon").terminate().success());
    a.start();
    b.start();
    assert!(b.login(&service.name, "crashy", "10.79.0.1").wait().expect("pam-driver").success());
    let e = b.wait_open("crashy", "10.79.0.1");
    assert_eq!((e["verdict"].as_str(), e["fleet"]["first_host"].as_str()), (Some("known"), Some("web-a")), "{e:#}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(alerts_by_ip(&hook), BTreeMap::from([("10.79.0.1".to_string(), 1)]));
}

/// The NATS permissions a host needs (as README "Fleet" documents them): publish its own event
/// subjects and the history bucket's API, receive replies in its inbox.
/// The subjects a host may publish to: its own events, and the bucket.
fn host_publish(host: &str) -> Vec<String> {
    [
        format!("notifier.events.{host}.>"),
        "$JS.API.INFO".into(),
        "$JS.API.STREAM.INFO.KV_notifier_history".into(),
        "$JS.API.CONSUMER.CREATE.KV_notifier_history".into(),
        "$JS.API.CONSUMER.CREATE.KV_notifier_history.>".into(),
        "$JS.API.CONSUMER.DELETE.KV_notifier_history.>".into(),
        "$JS.API.DIRECT.GET.KV_notifier_history.>".into(),
        "$JS.API.STREAM.MSG.GET.KV_notifier_history".into(),
        "$JS.FC.KV_notifier_history.>".into(),
        "$KV.notifier_history.>".into(),
    ]
    .into()
}

fn host_permissions(host: &str) -> String {
    let quoted: Vec<String> = host_publish(host).iter().map(|s| format!("\"{s}\"")).collect();
    format!("permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }}", quoted.join(", "))
}

/// `h`'s credentials are refused: its login `local` was judged locally (offline, alerting), and
/// its log says so once, naming the settings to check.
fn refused_but_working(h: &Host, local: &Value) {
    assert_eq!(
        (local["fleet"]["state"].as_str(), local["alert"].as_bool()),
        (Some("offline"), Some(true)),
        "{local:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let stderr = h.daemon().stderr();
    assert_eq!(stderr.matches("refused this host's credentials").count(), 1, "{stderr}");
    assert!(stderr.contains("fleet.credentials, fleet.user/password or fleet.token"), "{stderr}");
}

#[test]
fn wrong_credentials_give_one_clear_error_and_a_host_cannot_publish_as_another() {
    if !kernel_tests_enabled() {
        return;
    }
    let accounts = format!(
        "accounts {{ FLEET {{ jetstream: enabled, users: [\n\
         {{ user: admin, password: adminpw }}\n\
         {{ user: web-1, password: pw1, {} }}\n\
         {{ user: web-2, password: pw2, {} }}\n] }} }}",
        host_permissions("web-1"),
        host_permissions("web-2")
    );
    let Some(server) = NatsServer::start(&accounts) else { return };
    let service = PamService::permit("ntfleetp");
    let creds =
        |user: &str, pw: &str| format!("servers = [\"{}\"]\nuser = \"{user}\"\npassword = \"{pw}\"", server.url());
    let admin = Host::new("admin", &creds("admin", "adminpw"), "");
    fleet_init(&admin.d.config);
    let watch = fleet_watch(&admin.d.config);
    let mut web1 = Host::new("web-1", &creds("web-1", "pw1"), "");
    // web-2's own credentials, but it calls itself web-3: the server refuses its events.
    let mut posing = Host::new("web-3", &creds("web-2", "pw2"), "");
    let mut wrong = Host::new("web-4", &creds("web-1", "not-the-password"), "");
    for h in [&mut web1, &mut posing, &mut wrong] {
        h.start();
    }
    let login = |h: &mut Host, ip: &str| {
        assert!(h.login(&service.name, "perm", ip).wait().expect("pam-driver").success());
        h.wait_open("perm", ip)
    };
    let first = login(&mut web1, "10.80.0.1");
    assert_eq!(first["fleet"]["state"], "claimed", "web-1's permissions cover the bucket: {first:#}");
    // The posing host may use the bucket (its verdicts are fleet verdicts)...
    let known = login(&mut posing, "10.80.0.1");
    assert_eq!((known["verdict"].as_str(), known["fleet"]["first_host"].as_str()), (Some("known"), Some("web-1")));
    // ...but not publish events as web-3.
    assert!(
        posing.daemon().wait_stderr("Permissions Violation", WAIT),
        "the refused publish is reported: {}",
        posing.daemon().stderr()
    );
    // Wrong credentials: one clear error, and verdicts go on locally.
    let local = login(&mut wrong, "10.80.0.4");
    refused_but_working(&wrong, &local);

    web1.drain();
    let want = keys_of(&web1.printed);
    let shown = watch_until(&watch, &want);
    assert_eq!(keys_of(&shown), want, "web-1's events, and nothing from web-3 or web-4: {shown:#?}");
}

#[test]
fn creds_files_of_an_operator_account_work_and_an_unknown_accounts_are_refused_clearly() {
    if !kernel_tests_enabled() {
        return;
    }
    let operator = Operator::new();
    let Some(server) = NatsServer::start(&operator.server_config()) else { return };
    let service = PamService::permit("ntfleetj");
    let lab = Lab::new();
    let creds = |name: &str, text: String| {
        let path = lab.path(&format!("{name}.creds"));
        fs::write(&path, text).expect("writing the creds file");
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        format!("servers = [\"{}\"]\ncredentials = \"{}\"", server.url(), path.display())
    };
    let admin = Host::new("admin", &creds("admin", operator.creds("admin", None)), "");
    fleet_init(&admin.d.config);
    let watch = fleet_watch(&admin.d.config);
    let mut web1 = Host::new("web-1", &creds("web-1", operator.creds("web-1", Some(&host_publish("web-1")))), "");
    let mut stranger = Host::new("web-9", &creds("web-9", Operator::unknown_account_creds("web-9")), "");
    web1.start();
    stranger.start();
    let login = |h: &mut Host, ip: &str| {
        assert!(h.login(&service.name, "jwtuser", ip).wait().expect("pam-driver").success());
        h.wait_open("jwtuser", ip)
    };
    let first = login(&mut web1, "10.81.0.1");
    assert_eq!(first["fleet"]["state"], "claimed", "web-1's JWT allows the bucket: {first:#}\n{}", server.log());
    let local = login(&mut stranger, "10.81.0.9");
    refused_but_working(&stranger, &local);

    web1.drain();
    let want = keys_of(&web1.printed);
    let shown = watch_until(&watch, &want);
    assert_eq!(keys_of(&shown), want, "web-1's events, and nothing from web-9: {shown:#?}");
}

/// `notifier fleet init`, retried while a new cluster elects its JetStream leader.
fn fleet_init_when_ready(config: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let out =
            Command::new(notifier_bin()).args(["fleet", "init", "--config"]).arg(config).output().expect("fleet init");
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "fleet init: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_cluster_node_killed_under_load_loses_no_event_and_sends_no_second_alert() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(mut nodes) = nats_cluster(3) else { return };
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntfleetk");
    let urls: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    // Replicas 3; a claim may wait out a stream leader election (README "Fleet").
    let fleet = format!("servers = [{}]\nreplicas = 3\nclaim_timeout_ms = 20000", urls.join(", "));
    let sink = hook_sink(&hook);
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::new(&format!("node-host-{i}"), &fleet, &sink)).collect();
    fleet_init_when_ready(&hosts[0].d.config);
    let watch = fleet_watch(&hosts[0].d.config);
    for h in &mut hosts {
        h.start();
    }
    // Each round, all three hosts see one new address at once; node 1 dies after round 4.
    for round in 1..=10u32 {
        let ip = format!("10.81.0.{round}");
        let drivers: Vec<_> = hosts.iter().map(|h| h.login(&service.name, "clustered", &ip)).collect();
        for mut d in drivers {
            assert!(d.wait().expect("pam-driver").success());
        }
        if round == 4 {
            nodes[0].kill9();
        }
        let opens: Vec<Value> = hosts.iter_mut().map(|h| h.wait_open("clustered", &ip)).collect();
        let verdicts: Vec<String> =
            opens.iter().map(|e| format!("{} {} {}", e["host"], e["verdict"], e["reason"])).collect();
        assert_eq!(
            opens.iter().filter(|e| e["alert"] == true).count(),
            1,
            "round {round}: {verdicts:#?}\n{}",
            hosts.iter().map(|h| h.daemon().stderr()).collect::<Vec<_>>().join("\n")
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let alerts = alerts_by_ip(&hook);
    assert_eq!(alerts.len(), 10, "{alerts:?}");
    assert!(alerts.values().all(|n| *n == 1), "no second alert: {alerts:?}");
    for h in &mut hosts {
        h.drain();
    }
    let printed: Vec<Value> = hosts.iter().flat_map(|h| h.printed.clone()).collect();
    let want = keys_of(&printed);
    let shown = watch_until(&watch, &want);
    if keys_of(&shown) != want {
        let mut again = Command::new(notifier_bin());
        again.args(["fleet", "watch", "--json", "--since", "10m", "--config"]).arg(&hosts[1].d.config);
        let fresh = watch_until(&Notifier::spawn(again), &want);
        panic!(
            "the watch showed {} events of {}; a new watch shows {}; its stderr:\n{}\na host's stderr:\n{}",
            shown.len(),
            want.len(),
            keys_of(&fresh).len(),
            watch.stderr().lines().rev().take(60).collect::<Vec<_>>().join("\n"),
            hosts[0].daemon().stderr()
        );
    }
    drop(nodes);
}

/// `notifier fleet watch --json ARGS` from the start of the stream's last `since`, read until it
/// is quiet.
fn fleet_watch_filtered(config: &std::path::Path, args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(notifier_bin());
    cmd.args(["fleet", "watch", "--json", "--config"]).arg(config).args(args);
    let w = Notifier::spawn(cmd);
    w.lines_until_quiet(Duration::from_secs(3), WAIT).iter().map(|l| serde_json::from_str(l).expect("JSON")).collect()
}

#[test]
fn five_hosts_200_sessions_through_a_30_s_outage_every_event_once_claims_settle_and_filters_hold() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(mut server) = NatsServer::start("") else { return };
    let service = PamService::permit("ntfleeto");
    let fleet = format!("servers = [\"{}\"]", server.url());
    let mut hosts: Vec<Host> = (1..=5).map(|i| Host::new(&format!("web-{i}"), &fleet, "")).collect();
    fleet_init(&hosts[0].d.config);
    for h in &mut hosts {
        h.start();
        assert!(h.daemon().wait_stderr("Connected to a fleet server.", WAIT), "{}", h.daemon().stderr());
    }
    let ips: Vec<String> = (1..=40).map(|i| format!("10.79.0.{i}")).collect();

    // Down for 30 s, during which each host opens 40 sessions from the same 40 new addresses.
    server.kill9();
    let down = Instant::now();
    for ip in &ips {
        let drivers: Vec<_> = hosts.iter().map(|h| h.login(&service.name, "wanderer", ip)).collect();
        for mut d in drivers {
            assert!(d.wait().expect("pam-driver").success());
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    for h in &mut hosts {
        for ip in &ips {
            let e = h.wait_open("wanderer", ip);
            assert_eq!((&e["fleet"]["state"], &e["alert"]), (&json!("offline"), &json!(true)), "{}: {e:#}", h.name);
        }
    }
    assert!(down.elapsed() < Duration::from_secs(30), "200 sessions took {:?}", down.elapsed());
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    server.restart();
    for h in &hosts {
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.daemon().stderr().matches("Connected to a fleet server.").count() < 2 {
            assert!(Instant::now() < deadline, "{}: not connected again:\n{}", h.name, h.daemon().stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The claims settle: each address has one first host in the fleet history.
    let list = || {
        run(Command::new(notifier_bin())
            .args(["known", "list", "--fleet", "--json", "--config"])
            .arg(&hosts[0].d.config))
    };
    let deadline = Instant::now() + WAIT;
    let mut claimed: Vec<Value> = Vec::new();
    while Instant::now() < deadline {
        claimed = serde_json::from_str::<Vec<Value>>(&list()).expect("known list --fleet --json");
        claimed.retain(|e| e["entry"].as_str().is_some_and(|s| s.starts_with("ip 10.79.0.")));
        if claimed.len() == ips.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(claimed.len(), ips.len(), "every address claimed once: {claimed:#?}");

    // Every event of every host reaches the stream once: 200 opens, 200 closes.
    for h in &mut hosts {
        h.drain();
    }
    let printed: Vec<Value> = hosts.iter().flat_map(|h| h.printed.clone()).collect();
    let want = keys_of(&printed);
    assert_eq!(want.len(), 400, "each host printed 40 opens and 40 closes");
    let deadline = Instant::now() + WAIT * 2;
    let mut shown = Vec::new();
    while Instant::now() < deadline {
        shown = fleet_watch_filtered(&hosts[0].d.config, &["--since", "5m"]);
        if keys_of(&shown).len() >= want.len() {
            break;
        }
    }
    assert_eq!(keys_of(&shown), want, "each event once in the stream, after the outage");
    // The watch's filters: one host, one user, since a time.
    let one = fleet_watch_filtered(&hosts[0].d.config, &["--since", "5m", "--host", "web-3", "--user", "wanderer"]);
    assert!(one.iter().all(|e| e["host"] == "web-3" && e["user"] == "wanderer"), "{one:#?}");
    assert_eq!(one.iter().filter(|e| e["event"] == "session_open").count(), 40);
    let nobody = fleet_watch_filtered(&hosts[0].d.config, &["--since", "5m", "--user", "no-such-user"]);
    assert!(nobody.is_empty(), "{nobody:#?}");
    let later = fleet_watch_filtered(&hosts[0].d.config, &["--since", "1s"]);
    assert!(later.iter().all(|e| e["event"] != "session_open"), "nothing opened in the last second: {later:#?}");
}

#[test]
fn tls_with_a_pinned_ca_and_a_client_certificate_works_and_anything_less_is_refused_clearly() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::new();
    let ca = TestCa::new(&lab, "fleet-ca");
    let (srv_cert, srv_key) = ca.issue("nats", false);
    let (cli_cert, cli_key) = ca.issue("web-tls", true);
    let other = TestCa::new(&lab, "other-ca");
    // The server asks every client for a certificate its CA signed (mTLS).
    let tls = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}",
        srv_cert.display(),
        srv_key.display(),
        ca.cert.display()
    );
    let Some(server) = NatsServer::start(&tls) else { return };
    let url = server.url().replace("nats://", "tls://");
    let service = PamService::permit("ntfleett");
    let fleet = |ca: &Path, cert: bool| {
        let mut f = format!("servers = [\"{url}\"]\ntls_ca = \"{}\"\nclaim_timeout_ms = 500", ca.display());
        if cert {
            f += &format!("\ntls_cert = \"{}\"\ntls_key = \"{}\"", cli_cert.display(), cli_key.display());
        }
        f
    };

    // Pinned CA and a client certificate: set up, connected, claimed, in the stream.
    let mut good = Host::new("web-tls", &fleet(&ca.cert, true), "");
    fleet_init(&good.d.config);
    let watch = fleet_watch(&good.d.config);
    good.start();
    assert!(good.daemon().wait_stderr("Connected to a fleet server.", WAIT), "{}", good.daemon().stderr());
    assert!(good.login(&service.name, "tlsuser", "10.80.0.1").wait().expect("pam-driver").success());
    let open = good.wait_open("tlsuser", "10.80.0.1");
    assert_eq!(open["fleet"]["state"], "claimed", "{open:#}");
    good.drain();
    let want = keys_of(&good.printed);
    assert_eq!(keys_of(&watch_until(&watch, &want)), want, "over TLS into the stream and out to the watch");

    // No client certificate, or a CA that did not sign the server's: one clear error from
    // `fleet init`, and a daemon that still judges logins locally.
    for (name, config, why) in [
        ("web-nocert", fleet(&ca.cert, false), "CertificateRequired"),
        ("web-wrongca", fleet(&other.cert, true), "UnknownIssuer"),
    ] {
        let mut h = Host::new(name, &config, "");
        let out =
            Command::new(notifier_bin()).args(["fleet", "init", "--config"]).arg(&h.d.config).output().expect("init");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why) && err.contains("fleet.tls_ca"), "{name}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{name}: one error: {err}");
        h.start();
        assert!(h.login(&service.name, "tlsuser", "10.80.0.2").wait().expect("pam-driver").success());
        let open = h.wait_open("tlsuser", "10.80.0.2");
        assert_eq!((&open["fleet"]["state"], &open["alert"]), (&json!("offline"), &json!(true)), "{name}: {open:#}");
        assert!(h.daemon().wait_stderr("the TLS handshake failed", WAIT), "{name}: {}", h.daemon().stderr());
        std::thread::sleep(Duration::from_secs(2));
        let stderr = h.daemon().stderr();
        assert_eq!(stderr.matches("the TLS handshake failed").count(), 1, "{name}: said once: {stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
    }
}

#[test]
fn a_full_outbox_drops_the_oldest_events_with_one_health_alert_and_keeps_the_newest() {
    if !kernel_tests_enabled() {
        return;
    }
    let Some(mut server) = NatsServer::start("") else { return };
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntfleetf");
    let fleet = format!(
        "servers = [\"{}\"]\noutbox_max_events = 20\nunreachable_alert_secs = 0\nreplay_rate = 5",
        server.url()
    );
    let sink = hook_sink(&hook);
    let mut h = Host::new("web-full", &fleet, &sink);
    fleet_init(&h.d.config);
    h.start();
    assert!(h.daemon().wait_stderr("Connected to a fleet server.", WAIT), "{}", h.daemon().stderr());

    // 15 sessions (30 events) while the server is down, into an outbox of 20.
    server.kill9();
    assert!(h.daemon().wait_stderr("Disconnected", WAIT), "{}", h.daemon().stderr());
    for _ in 0..15 {
        assert!(h.login(&service.name, "filler", "10.81.0.1").wait().expect("pam-driver").success());
        h.wait_open("filler", "10.81.0.1");
    }
    h.drain();
    let full = |r: &Request| {
        r.json()["kind"] == "health" && r.json()["reason"].as_str().unwrap_or("").contains("outbox is full")
    };
    hook.wait(WAIT, |r| r.iter().any(full));
    std::thread::sleep(Duration::from_secs(1));
    let healths: Vec<Value> = hook.requests().iter().filter(|r| full(r)).map(Request::json).collect();
    assert_eq!(healths.len(), 1, "one health alert: {healths:#?}");
    assert!(healths[0]["reason"].as_str().unwrap().contains("(20 events)"), "{healths:#?}");

    // Back up: what the outbox kept reaches the stream, the newest first kept, the oldest gone.
    server.restart();
    let printed = keys_of(&h.printed);
    assert_eq!(printed.len(), 30);
    let deadline = Instant::now() + WAIT;
    let mut shown = Vec::new();
    while Instant::now() < deadline {
        shown = keys_of(&fleet_watch_filtered(&h.d.config, &["--since", "5m", "--host", "web-full"]));
        if shown.iter().any(|k| *k == printed_last(&h.printed)) {
            break;
        }
    }
    assert!(shown.len() <= 20 && shown.len() >= 10, "at most the outbox's 20 events: {}", shown.len());
    assert!(shown.iter().all(|k| printed.contains(k)), "nothing but what the host printed");
    assert!(shown.contains(&printed_last(&h.printed)), "the newest event is kept");
    let first = h.printed.iter().find(|e| e["event"] == "session_open").expect("first open");
    let first = (
        first["host"].as_str().unwrap().to_string(),
        first["session"].as_str().unwrap().to_string(),
        "session_open".to_string(),
    );
    assert!(!shown.contains(&first), "the oldest event was dropped");
    // The replay went at replay_rate (5 a second, after a burst of one second's worth): the
    // server stored the host's events over seconds, not at once.
    let stored: Vec<f64> = stream_messages(&server.url(), "NOTIFIER_EVENTS")
        .into_iter()
        .filter(|(subject, _)| subject.starts_with("notifier.events.web-full."))
        .map(|(_, at)| at)
        .collect();
    assert!(stored.len() >= 15, "{stored:?}");
    let span = stored[stored.len() - 1] - stored[0];
    let fastest = (stored.len() - 5) as f64 / 5.0;
    assert!(span >= fastest * 0.8, "{} events stored over {span:.2} s, not at 5 a second", stored.len());
}

/// (host, session, event) of the last login event a host printed.
fn printed_last(printed: &[Value]) -> (String, String, String) {
    let e = printed.iter().rev().find(|e| e["session"].is_string()).expect("a login event");
    (e["host"].as_str().unwrap().into(), e["session"].as_str().unwrap().into(), e["event"].as_str().unwrap().into())
}
