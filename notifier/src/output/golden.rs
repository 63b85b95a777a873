//! Golden files for both output forms: the exact bytes of every kind of line, from `watch` and
//! from `run`, with hostile strings. Any change to a format fails here; if the change is meant,
//! run `NOTIFIER_BLESS=1 cargo test -p notifier golden` and review the diff of the two files.

use super::{write, Output};
use crate::{
    enrich::{
        geo::{Asn, Geo},
        process::Ancestor,
    },
    event::{sample_login, EventKind, Format, LostEvent, Origin},
    peer::Peer,
    policy::{BruteForceEvent, Judged, Judgement},
    verdict::Verdict,
};

fn outputs() -> Vec<Output> {
    let open = sample_login();

    let mut close = sample_login();
    close.event = EventKind::SessionClose;
    close.user = Some("eve \"x\"\n\u{2028}\u{202e}\t\\ é".into());
    close.peer = Some(Peer { ip: "2001:db8::7".parse().unwrap(), port: Some(2222) });
    close.duration_ms = Some(Some(72_454));
    close.witnesses = vec!["sshd"];
    close.missed_by = vec!["pam"];
    close.trusted = false;
    close.truncated = vec!["user", "rhost"];
    close.comm = "sshd: x\x07".into();

    let mut failure = sample_login();
    failure.event = EventKind::AuthFailure;
    failure.peer = None;
    failure.rhost = Some("scanner.example.net".into());
    failure.auth = None;
    failure.pam_result = Some("PAM_AUTH_ERR".into());
    failure.uid = Some(1000);
    failure.witnesses = vec!["pam"];

    let mut unopened = sample_login();
    unopened.event = EventKind::SessionClose;
    unopened.duration_ms = Some(None);

    let judged = Judged {
        login: sample_login(),
        verdict: Some(Verdict::NewNetwork),
        reason: Some("new network 203.0.113.0/24 for alice,\nfrom 203.0.113.7".into()),
        alert: true,
        learning: false,
        geo: Some(Geo { country: Some("NZ".into()), country_name: Some("New Zealand".into()), city: None }),
        asn: Some(Asn { number: 64500, org: Some("Example Net".into()) }),
        rdns: Some("host 7.example.net".into()),
        ancestry: Vec::new(),
        failures_before: Some(3),
        fleet: None,
    };
    let mut sudo = sample_login();
    (sudo.service, sudo.peer, sudo.rhost, sudo.tty, sudo.auth) =
        (Some("sudo".into()), None, None, Some("/dev/pts/0".into()), None);
    (sudo.user, sudo.ruser) = (Some("root".into()), Some("alice".into()));
    sudo.origin = Some(Origin {
        peer: Some(Peer { ip: "203.0.113.7".parse().unwrap(), port: Some(52144) }),
        user: Some("alice".into()),
        session: "0123456789abcdef".into(),
    });
    let local = Judged {
        login: sudo,
        verdict: Some(Verdict::PrivilegeChange),
        reason: Some(
            "alice (from 203.0.113.7:52144) became root with sudo; the SSH login came from a known source".into(),
        ),
        alert: false,
        learning: true,
        geo: None,
        asn: None,
        rdns: None,
        ancestry: vec![Ancestor { pid: 4000, comm: "bash".into(), uid: 1000, user: Some("alice".into()) }],
        failures_before: None,
        fleet: None,
    };
    let closed = Judged { login: unopened.clone(), verdict: None, reason: None, alert: false, ..judged.clone() };
    let brute = BruteForceEvent {
        time: "2026-11-24T18:10:11.020Z".into(),
        event: "brute_force",
        ip: "198.51.100.9".parse().unwrap(),
        count: 5,
        users: vec!["root".into(), "ad min".into()],
        window_secs: 60,
        verdict: Verdict::BruteForce,
        alert: true,
        geo: None,
        asn: Some(Asn { number: 64501, org: None }),
        host: "web-1".into(),
    };
    let lost = LostEvent {
        time: "2026-11-24T18:10:12.000Z".into(),
        event: "events_lost",
        ring_full: 7,
        inflight_full: 1,
        handles_full: 2,
        read_failed: 3,
        no_entry: 4,
        session_table_full: 5,
        budget: 6,
        lost: 28,
        total: 40,
        trusted: 3,
        untrusted: 25,
    };
    vec![
        Output::Captured(Box::new(open)),
        Output::Captured(Box::new(close)),
        Output::Captured(Box::new(failure)),
        Output::Captured(Box::new(unopened)),
        Output::Judged(Judgement::Login(Box::new(judged))),
        Output::Judged(Judgement::Login(Box::new(local))),
        Output::Judged(Judgement::Login(Box::new(closed))),
        Output::Judged(Judgement::BruteForce(Box::new(brute))),
        Output::Lost(lost),
    ]
}

fn check(format: Format, golden: &str, file: &str) {
    let mut out = Vec::new();
    for o in outputs() {
        write(&mut out, format, &o).unwrap();
    }
    let out = String::from_utf8(out).unwrap();
    if std::env::var_os("NOTIFIER_BLESS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/output").join(file);
        std::fs::write(path, &out).unwrap();
        return;
    }
    assert_eq!(out.lines().count(), outputs().len(), "one line per event:\n{out}");
    for (i, (got, want)) in out.lines().zip(golden.lines()).enumerate() {
        assert_eq!(got, want, "line {} of {file} differs", i + 1);
    }
    assert_eq!(out, golden, "{file}");
}

#[test]
fn text_lines_are_unchanged() {
    check(Format::Text, include_str!("golden.txt"), "golden.txt");
}

#[test]
fn json_lines_are_unchanged() {
    check(Format::Json, include_str!("golden.jsonl"), "golden.jsonl");
}
