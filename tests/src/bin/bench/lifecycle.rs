//! Cases: stopping and coming back. `notifier watch` with every PAM and sshd probe attached, from
//! SIGTERM to exit (with uprobe_multi links, and with the perf-event uprobes of older kernels);
//! and a `notifier run` killed with SIGKILL, until it is gone and until a new one started at once
//! has its probes attached.

use super::*;

/// The number in `key=N` of the "Probes attached." line of a start's log.
fn probes_attached(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("Probes attached."))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("probes=")?.parse().ok()))
        .unwrap_or(0)
}

pub(crate) fn stop_and_restart(report: &mut Report, runs: usize) {
    for (multi, label, target) in
        [("1", "uprobe_multi links", "≤ 300 ms"), ("0", "perf-event uprobes (NOTIFIER_UPROBE_MULTI=0)", "")]
    {
        let (mut exits, mut probes) = (Vec::new(), 0);
        for _ in 0..runs {
            let mut cmd = Command::new(notifier_bin());
            cmd.arg("watch").env("NOTIFIER_UPROBE_MULTI", multi);
            let n = Notifier::spawn(cmd);
            let log = n.stderr();
            assert!(log.contains("sshd witness attached."), "the bench needs sshd installed; notifier said:\n{log}");
            probes = probes_attached(&log);
            let begin = Instant::now();
            let status = n.terminate();
            exits.push(begin.elapsed().as_secs_f64() * 1000.0);
            assert!(status.success(), "notifier watch exited with {status} after SIGTERM");
        }
        let m = median(&exits);
        report.row(
            "stop",
            format!("SIGTERM → exit, watch, {probes} PAM probes + sshd witness, {label} ({runs} runs)"),
            format!("{m:.0} ms median (spread {})", spread(&exits)),
            target,
            if target.is_empty() { "-".into() } else { met(m <= 300.0) },
        );
    }

    let unit = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/notifier.service"))
        .unwrap_or_default();
    let restart_sec = unit.lines().find_map(|l| l.strip_prefix("RestartSec=")).unwrap_or("?").to_string();
    let d = DaemonLab::new(|_| String::new());
    let (mut gone, mut back) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let n = Notifier::run(&d.config);
        let begin = Instant::now();
        n.kill9();
        gone.push(begin.elapsed().as_secs_f64() * 1000.0);
        let again = Notifier::run(&d.config);
        back.push(begin.elapsed().as_secs_f64() * 1000.0);
        drop(again);
    }
    report.row(
        "stop",
        format!("kill -9 of notifier run → gone; → probes attached again, restarted at once ({runs} runs)"),
        format!(
            "{:.0} ms, then {:.0} ms median (spreads {}, {}); the unit waits RestartSec={restart_sec} between",
            median(&gone),
            median(&back),
            spread(&gone),
            spread(&back)
        ),
        "",
        "-",
    );
}
