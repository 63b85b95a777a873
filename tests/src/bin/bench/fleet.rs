//! Fleet mode's figures: the time from a session's open to its line in `notifier fleet watch`,
//! what fleet mode adds to the daemon's CPU and memory, pam_open_session's latency with the NATS
//! server up and killed, and the claims per second one server takes from simulated hosts.

use super::*;

fn fleet_host(lab: &Lab, server: &NatsServer, fleet: bool) -> DaemonLab {
    let libpam = private_libpam(lab);
    DaemonLab::new(|_| {
        let mut text =
            format!("host = \"bench-1\"\n[capture]\nlibpam = [\"{}\"]\nsshd_witness = false\n", libpam.display());
        if fleet {
            text.push_str(&format!("[fleet]\nservers = [\"{}\"]\nunreachable_alert_secs = 0\n", server.url()));
        }
        text
    })
}

fn fleet_init(config: &Path) {
    run(Command::new(notifier_bin()).args(["fleet", "init", "--config"]).arg(config));
}

/// pam-driver through `lab`'s libpam: `count` sessions at `rate` per second from 2001:db8:90::i; the
/// stamps (session, opened at, open took) are returned. The addresses are IP literals, so that
/// libpam never asks a resolver.
fn sessions(lab: &Lab, service: &str, count: usize, rate: u64, tag: &str) -> Vec<(u64, u128, u128)> {
    let stamps = lab.path(&format!("stamps-{tag}"));
    let mut cmd = pam_driver_cmd();
    cmd.env("LD_LIBRARY_PATH", &lab.dir)
        .args([
            "--service",
            service,
            "--user",
            "fleetbench",
            "--rhost",
            "2001:db8:90::{i}",
            "--rate",
            &rate.to_string(),
        ])
        .args(["--count", &count.to_string(), "--stamps"])
        .arg(&stamps);
    run(&mut cmd);
    fs::read_to_string(&stamps)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u128>().ok());
            Some((f.next()?? as u64, f.next()??, f.next()??))
        })
        .collect()
}

pub(crate) fn fleet(report: &mut Report, count: usize) {
    let Some(server) = NatsServer::start("") else { return };
    let service = PamService::permit("ntbfleet");
    // Session open → visible in `fleet watch`.
    let lab = Lab::new();
    let d = fleet_host(&lab, &server, true);
    fleet_init(&d.config);
    let mut watch_cmd = Command::new(notifier_bin());
    watch_cmd.args(["fleet", "watch", "--json", "--config"]).arg(&d.config);
    let watch = Notifier::spawn(watch_cmd);
    let n = Notifier::run(&d.config);
    // The driver runs while the watch's lines are read, each timed as it arrives.
    let opened = std::thread::scope(|scope| {
        let driver = scope.spawn(|| sessions(&lab, &service.name, count, 20, "watch"));
        let mut arrived = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while arrived.len() < count && Instant::now() < deadline {
            let Some(line) = watch.next_line(Duration::from_secs(5)) else { break };
            let at = now_ns();
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            let i = v["rhost"].as_str().and_then(|r| r.rsplit(':').next()).and_then(|x| x.parse::<u64>().ok());
            if let (true, Some(i)) = (v["event"] == "session_open", i) {
                arrived.push((i, at));
            }
        }
        let opened = driver.join().unwrap_or_default();
        arrived
            .into_iter()
            .filter_map(|(i, at)| {
                opened.iter().find(|(j, _, _)| *j == i).map(|(_, sent, _)| (at as f64 - *sent as f64) / 1e6)
            })
            .collect::<Vec<f64>>()
    });
    let lat = opened;
    report.row(
        "fleet",
        format!("session open → line in `fleet watch` (n={})", lat.len()),
        format!("p50 {:.1} ms, p99 {:.1} ms", median(&lat), pct(&lat, 99.0)),
        "",
        "-",
    );
    drop((n, watch));
    // What fleet mode adds: the same sessions through a daemon without and with [fleet].
    let mut costs = Vec::new();
    for fleet in [false, true] {
        let lab = Lab::new();
        let d = fleet_host(&lab, &server, fleet);
        let n = Notifier::run(&d.config);
        let (cpu0, _) = cpu_and_switches(n.pid());
        sessions(&lab, &service.name, 2000, 200, "cost");
        std::thread::sleep(Duration::from_secs(2));
        let (cpu1, _) = cpu_and_switches(n.pid());
        let (_, _, private) = rss_parts(n.pid());
        costs.push(((cpu1 - cpu0) as f64 * 10.0, status_field(n.pid(), "VmRSS:") as f64 / 1024.0, private));
    }
    report.row(
        "fleet",
        "CPU and RSS for 2000 sessions at 200/s, without → with [fleet]",
        format!(
            "CPU {:.0} → {:.0} ms; RSS {:.1} → {:.1} MB (own memory {:.1} → {:.1} MB)",
            costs[0].0, costs[1].0, costs[0].1, costs[1].1, costs[0].2, costs[1].2
        ),
        "",
        "-",
    );
    outage(report, &service.name);
    claims_per_second(report, &server);
}

/// 5 hosts, 200 sessions in all, with the server up, then with it killed for 30 s.
fn outage(report: &mut Report, service: &str) {
    let Some(mut server) = NatsServer::start("") else { return };
    let labs: Vec<Lab> = (0..5).map(|_| Lab::new()).collect();
    let hosts: Vec<DaemonLab> = labs.iter().map(|l| fleet_host(l, &server, true)).collect();
    fleet_init(&hosts[0].config);
    let _daemons: Vec<Notifier> = hosts.iter().map(|d| Notifier::run(&d.config)).collect();
    let mut figures = Vec::new();
    for down in [false, true] {
        if down {
            server.kill9();
        }
        let started = Instant::now();
        let took: Vec<f64> = std::thread::scope(|s| {
            let runs: Vec<_> = labs
                .iter()
                .enumerate()
                .map(|(i, lab)| s.spawn(move || sessions(lab, service, 40, 2, &format!("outage-{down}-{i}"))))
                .collect();
            runs.into_iter().flat_map(|r| r.join().unwrap_or_default()).map(|(_, _, ns)| ns as f64 / 1e6).collect()
        });
        if down {
            std::thread::sleep(Duration::from_secs(30).saturating_sub(started.elapsed()));
            server.restart();
        }
        figures.push(format!(
            "{} p50 {:.2} ms, p99 {:.2} ms (n={})",
            if down { "server killed" } else { "server up" },
            median(&took),
            pct(&took, 99.0),
            took.len()
        ));
    }
    report.row("fleet", "pam_open_session, 5 hosts × 40 sessions", figures.join("; "), "unchanged", "-");
}

/// Simulated hosts, each its own connection, creating new keys as fast as the server answers.
fn claims_per_second(report: &mut Report, server: &NatsServer) {
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (done, secs) = rt.block_on(async move {
        let client = async_nats::connect(&url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let _ = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "claims_bench".into(),
                history: 5,
                ..Default::default()
            })
            .await;
        let hosts = 50;
        let run_for = Duration::from_secs(10);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for h in 0..hosts {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let client = async_nats::connect(&url).await.expect("connect");
                let kv = async_nats::jetstream::new(client).get_key_value("claims_bench").await.expect("bucket");
                let mut n = 0u64;
                while started.elapsed() < run_for {
                    if kv.create(format!("u.{h:02x}.ip.{n:08x}"), bytes::Bytes::from_static(b"{}")).await.is_ok() {
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap_or(0);
        }
        (done, started.elapsed().as_secs_f64())
    });
    let rate = done as f64 / secs;
    report.row(
        "fleet",
        "claims/s, one server, 50 simulated hosts (10 s)",
        format!("{rate:.0}/s ({done} claims)"),
        "",
        "-",
    );
    report.notes.push(format!(
        "Fleet claims: one nats-server took {rate:.0} claims per second from 50 simulated hosts (each its own connection, \
         one create at a time). A claim is made only for a login whose source neither the host nor the fleet's mirror \
         knows. 500 hosts with 20 logins an hour each make about 3 logins per second in all: {:.3} % of that capacity \
         even if every login claimed.",
        300.0 / rate
    ));
}
