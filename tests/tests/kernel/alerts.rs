//! Alert delivery against real receivers: aiosmtpd for email, HTTP receivers that check the
//! request shapes of Pushover, ntfy, Gotify, Telegram, Slack, Discord and the signed webhook, and a
//! script run by the exec sink. Also retries, restarts, dead letters, rate limits and test-alert.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use hmac::{Hmac, Mac as _};
use notifier_tests::*;
use serde_json::json;

use super::{pam_driver, wait_for, WAIT};

/// A daemon with a private libpam for pam-driver logins, host `web-test-1`, and fast retries.
struct AlertLab {
    d: DaemonLab,
}

impl AlertLab {
    fn new(body: &str) -> Self {
        let d = DaemonLab::new(|lab| {
            let libpam = private_libpam(lab);
            format!(
                "host = \"web-test-1\"\n[capture]\nlibpam = [\"{}\"]\n[alerts]\nretry_initial_ms = 200\n{body}",
                libpam.display()
            )
        });
        Self { d }
    }

    /// A PAM login through the private libpam (trusted: the driver runs as root).
    fn login(&self, service: &PamService, user: &str, rhost: &str, count: u32) {
        run(Command::new(pam_driver()).env("LD_LIBRARY_PATH", &self.d.lab.dir).args([
            "--service",
            &service.name,
            "--user",
            user,
            "--rhost",
            rhost,
            "--count",
            &count.to_string(),
        ]));
    }
}

/// Pushover's application token and user key: 30 letters and digits, as its receiver checks.
const PO_TOKEN: &str = "azGDORePK8gMaC0QOYAMyEEuzJnyUi";
const PO_USER: &str = "uQiRzpo4DXghDmr9QzzfQu27cmVRsG";

/// The email parsed by Python's `email` package under its strict policy (which raises on any
/// defect): its `MIME-Version` and `Message-ID`.
fn strict_email(raw: &str) -> Value {
    let script = "import email, email.policy, json, sys\n\
        m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.strict)\n\
        m.get_content()\n\
        print(json.dumps({'mime_version': str(m['MIME-Version']), 'message_id': str(m['Message-ID'])}))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), raw.as_bytes()).expect("writing the email");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success(), "the email does not parse strictly: {}\n{raw}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

pub(crate) fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn exec_script(dir: &Path) -> PathBuf {
    let script = dir.join("alert.sh");
    // Writes what it received; quoting keeps event data inert inside the script too.
    fs::write(
        &script,
        "#!/bin/sh\nenv > \"$1/env\"\ngrep ^Cap /proc/self/status > \"$1/caps\"\ncat > \"$1/stdin.json\"\n",
    )
    .expect("script");
    run(Command::new("chmod").arg("755").arg(&script));
    script
}

#[test]
fn one_login_reaches_email_every_http_api_and_exec() {
    if !kernel_tests_enabled() {
        return;
    }
    let sshd = Sshd::start("PasswordAuthentication no");
    let user = TestUser::new();
    user.authorize_key(&sshd.lab.path("client_key.pub"));
    let http = HttpReceiver::start();
    let scratch = Lab::new();
    let smtp = SmtpServer::start(&scratch);
    fs::write(scratch.path("po_user"), "uQiRzpo4DXghDmr9QzzfQu27cmVRsG\n").expect("secret");
    let script = exec_script(&scratch.dir);
    // The daemon watches the system libpam here: this is a real sshd login.
    let lab = Lab::new();
    let config = lab.path("notifier.toml");
    fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
host = "web-test-1"
[[sink]]
name = "mail"
type = "email"
server = "127.0.0.1"
port = {smtp}
tls = "none"
from = "notifier@web-test-1.example"
to = ["ops@example.test", "oncall@example.test"]
[[sink]]
name = "po"
type = "pushover"
api_base = "{base}/pushover"
token = "azGDORePK8gMaC0QOYAMyEEuzJnyUi"
user_key = {{ file = "{po_user}" }}
[[sink]]
name = "ntfy"
type = "ntfy"
server = "{base}/ntfy"
topic = "logins"
token = "tk_ntfy"
priority = 4
tags = ["warning"]
[[sink]]
name = "gotify"
type = "gotify"
server = "{base}/gotify"
token = "AbCgotify"
[[sink]]
name = "tg"
type = "telegram"
api_base = "{base}/tg"
token = "123456:ABC-DEF"
chat_id = "-1001234"
[[sink]]
name = "slack"
type = "slack"
url = "{base}/slack/T000/B000/XXX"
[[sink]]
name = "discord"
type = "discord"
url = "{base}/discord/api/webhooks/1/tok"
[[sink]]
name = "hook"
type = "webhook"
url = "{base}/hook"
secret = "hook-secret"
headers = {{ X-Env = "test" }}
[[sink]]
name = "script"
type = "exec"
command = ["{script}", "{out}"]
"#,
            state = lab.path("state").display(),
            smtp = smtp.port,
            base = http.url(""),
            po_user = scratch.path("po_user").display(),
            script = script.display(),
            out = scratch.dir.display(),
        ),
    )
    .expect("config");
    let n = Notifier::run(&config);
    let out = run(sshd.ssh(&user.name, "127.0.0.1", Some("127.0.0.23"), &[]).arg("echo \"$SSH_CONNECTION\""));
    let port: u64 = out.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("client port");
    let (open, _) = wait_for(&n, &user.name, "session_open");
    assert_eq!(open["alert"], true, "{open}");
    let name = user.name.as_str();

    // Email: subject and body name the user, the IP, the port and the host.
    let mail = smtp.wait(1, WAIT);
    assert_eq!(mail.len(), 1, "one email");
    let (headers, body) = mail[0].split_once("\n\n").expect("headers and body");
    let subject = headers.lines().find(|l| l.starts_with("Subject:")).expect("Subject");
    assert!(subject.contains(name) && subject.contains("127.0.0.23") && subject.contains("web-test-1"), "{subject}");
    let body = body.replace("=\n", ""); // quoted-printable soft breaks
    assert!(
        body.contains(&format!("127.0.0.23:{port}")) && body.contains(name) && body.contains("web-test-1"),
        "{body}"
    );
    assert!(headers.contains("ops@example.test") && headers.contains("oncall@example.test"), "{headers}");
    let parsed = strict_email(&mail[0]);
    assert_eq!(parsed["mime_version"], "1.0", "{parsed}");
    assert!(parsed["message_id"].as_str().unwrap().ends_with("@web-test-1.example>"), "the sender's domain: {parsed}");

    let reqs = http.wait(WAIT, |r| r.len() >= 7);
    // Every service's receiver found its rules kept (priority ranges, lengths, keys).
    for r in &reqs {
        assert_eq!((r.status, &r.rejected), (200, &None), "{} refused it", r.path);
    }
    let by = |prefix: &str| {
        reqs.iter().find(|r| r.path.starts_with(prefix)).unwrap_or_else(|| panic!("no request to {prefix}: {reqs:?}"))
    };

    let po = by("/pushover/1/messages.json");
    assert_eq!(po.method, "POST");
    assert_eq!(po.header("content-type"), Some("application/x-www-form-urlencoded"));
    let form = po.form();
    let field = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(field("token"), Some("azGDORePK8gMaC0QOYAMyEEuzJnyUi"));
    assert_eq!(field("user"), Some("uQiRzpo4DXghDmr9QzzfQu27cmVRsG"), "user key from the secret file");
    assert!(
        field("message").is_some_and(|m| m.contains(name) && m.contains(&format!("127.0.0.23:{port}"))),
        "{form:?}"
    );
    assert_eq!(field("priority"), Some("0"));
    // Pushover's documented limits, and the event's own time (Unix seconds), not the send time.
    assert!(
        field("title").is_some_and(|t| t.chars().count() <= 250)
            && field("message").is_some_and(|m| m.chars().count() <= 1024)
    );
    let event_time =
        time::OffsetDateTime::parse(open["time"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .expect("event time")
            .unix_timestamp();
    assert_eq!(field("timestamp"), Some(event_time.to_string().as_str()), "{form:?}");

    let ntfy = by("/ntfy");
    assert_eq!(ntfy.header("authorization"), Some("Bearer tk_ntfy"));
    let j = ntfy.json();
    assert_eq!(
        (&j["topic"], &j["priority"], &j["tags"]),
        (&Value::from("logins"), &Value::from(4), &serde_json::json!(["warning"]))
    );
    assert!(
        j["title"].as_str().unwrap().contains(name) && j["message"].as_str().unwrap().contains("127.0.0.23"),
        "{j}"
    );
    // ntfy: a message over 4,096 bytes becomes an attachment; priorities are 1 to 5.
    assert!(j["message"].as_str().unwrap().len() <= 4096 && (1..=5).contains(&j["priority"].as_i64().unwrap()));

    let gotify = by("/gotify/message");
    assert_eq!(gotify.header("x-gotify-key"), Some("AbCgotify"));
    let j = gotify.json();
    // No priority configured: none is sent, so the application's default applies.
    assert!(
        j["title"].is_string() && j["message"].as_str().unwrap().contains(name) && j.get("priority").is_none(),
        "{j}"
    );

    let tg = by("/tg/bot123456:ABC-DEF/sendMessage");
    let j = tg.json();
    assert_eq!(j["chat_id"], -1_001_234);
    assert!(j["text"].as_str().unwrap().contains(name) && j.get("parse_mode").is_none(), "{j}");
    // Telegram's current field; `disable_web_page_preview` is deprecated.
    assert_eq!(j["link_preview_options"], serde_json::json!({ "is_disabled": true }), "{j}");
    assert!(j.get("disable_web_page_preview").is_none() && j["text"].as_str().unwrap().chars().count() <= 4096);

    let slack = by("/slack/T000/B000/XXX").json();
    assert!(slack["text"].as_str().unwrap().contains(name), "{slack}");
    let discord = by("/discord/api/webhooks/1/tok").json();
    assert!(discord["content"].as_str().unwrap().contains(name), "{discord}");
    assert_eq!(discord["allowed_mentions"]["parse"], serde_json::json!([]));

    let hook = by("/hook");
    assert_eq!(hook.header("x-env"), Some("test"));
    let signature = hook.header("x-notifier-signature").expect("signature header");
    assert_eq!(signature, format!("sha256={}", hmac_hex("hook-secret", &hook.body)), "valid HMAC of the body");
    let j = hook.json();
    assert_eq!(j["schema"], 1, "{j}");
    assert_schema_valid(Some("webhook"), std::slice::from_ref(&j));
    assert_eq!(hook.header("idempotency-key"), j["id"].as_str());
    // Standard Webhooks: the id, this attempt's time and the body, signed together.
    let (id, ts) =
        (hook.header("webhook-id").expect("webhook-id"), hook.header("webhook-timestamp").expect("timestamp"));
    assert_eq!(Some(id), j["id"].as_str());
    let ts: i64 = ts.parse().expect("Unix seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now - ts).abs() < 60, "webhook-timestamp {ts} is this attempt's time");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").expect("key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hook.body);
    let want = format!(
        "v1,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, mac.finalize().into_bytes())
    );
    assert_eq!(hook.header("webhook-signature"), Some(want.as_str()));
    assert_eq!(j["event"]["user"], name);
    assert_eq!(j["event"]["peer"]["port"], port);
    assert_eq!(j["verdict"], open["verdict"]);

    // Exec: argv, pam_exec-style variables and the JSON on stdin.
    let deadline = std::time::Instant::now() + WAIT;
    while !scratch.path("stdin.json").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = fs::read_to_string(scratch.path("env")).expect("exec env");
    for want in ["PAM_RHOST=127.0.0.23", &format!("PAM_USER={name}"), "PAM_TYPE=open_session", "PAM_SERVICE=sshd"] {
        assert!(env.lines().any(|l| l == want), "{want} not in {env}");
    }
    let stdin: Value =
        serde_json::from_str(&fs::read_to_string(scratch.path("stdin.json")).expect("stdin")).expect("JSON");
    assert_eq!(stdin["event"]["peer"]["port"], port);
    // The program runs as root with no capability at all: none held, none to gain.
    let caps = fs::read_to_string(scratch.path("caps")).expect("exec caps");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = caps.lines().find(|l| l.starts_with(set)).unwrap_or_else(|| panic!("{set} in {caps}"));
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
}

#[test]
fn hostile_user_cannot_add_an_email_header_or_reach_a_shell() {
    if !kernel_tests_enabled() {
        return;
    }
    let scratch = Lab::new();
    let smtp = SmtpServer::start(&scratch);
    let script = exec_script(&scratch.dir);
    let marker = scratch.path("pwned");
    let service = PamService::permit("nthostile");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"mail\"\ntype = \"email\"\nserver = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"n@example.test\"\nto = [\"ops@example.test\"]\n\
         [[sink]]\nname = \"script\"\ntype = \"exec\"\ncommand = [\"{}\", \"{}\"]",
        smtp.port,
        script.display(),
        scratch.dir.display()
    ));
    let n = Notifier::run(&a.d.config);
    let user = format!("evil\r\nBcc: victim@example.test\r\n$(touch {})`touch {}`", marker.display(), marker.display());
    a.login(&service, &user, "203.0.113.77", 1);
    let mail = smtp.wait(1, WAIT);
    assert_eq!(mail.len(), 1, "one email; stderr:\n{}", n.stderr());
    let (headers, _) = mail[0].split_once("\n\n").expect("headers");
    assert!(
        !headers.lines().any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "a Bcc header was injected:\n{headers}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !scratch.path("stdin.json").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stdin: Value =
        serde_json::from_str(&fs::read_to_string(scratch.path("stdin.json")).expect("stdin")).expect("JSON");
    assert_eq!(stdin["user"], user.as_str(), "the exec sink gets the user name unchanged");
    assert!(!marker.exists(), "event data reached a shell");
}

#[test]
fn failing_receivers_recover_survive_kill_9_and_never_storm() {
    if !kernel_tests_enabled() {
        return;
    }
    let flaky = HttpReceiver::start();
    flaky.respond_with(&[500, 500, 500]);
    let rejecting = HttpReceiver::start();
    rejecting.respond_with(&[400; 50]);
    let moved = HttpReceiver::start();
    moved.respond_with(&[301; 50]);
    let down_port = unused_port();
    let service = PamService::permit("ntretry");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"flaky\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[sink]]\nname = \"rejecting\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[sink]]\nname = \"moved\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[sink]]\nname = \"down\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{down_port}/hook\"",
        flaky.url("/hook"),
        rejecting.url("/hook"),
        moved.url("/hook")
    ));
    let n = Notifier::run(&a.d.config);
    a.login(&service, "retryuser", "198.51.100.99", 1);
    wait_for(&n, "retryuser", "session_open");

    // 500, 500, 500, then 200: delivered once the receiver recovers, with one idempotency key.
    let reqs = flaky.wait(WAIT, |r| r.iter().any(|q| q.status == 200));
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), [500, 500, 500, 200]);
    assert!(reqs.windows(2).all(|w| w[0].header("idempotency-key") == w[1].header("idempotency-key")));

    // 400: one attempt, then the dead-letter file; no retry storm.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rejecting.requests().len(), 1, "a 400 must not be retried");
    let dead = fs::read_to_string(a.d.state("dead-letter.jsonl")).expect("dead-letter file");
    assert!(dead.contains("\"sink\":\"rejecting\"") && dead.contains("400"), "{dead}");
    // 301: not followed (it would turn the POST into a GET that "succeeds"), not delivered, and
    // the dead letter names where the server points.
    let moved_reqs = moved.requests();
    assert_eq!(
        moved_reqs.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect::<Vec<_>>(),
        [("POST", "/hook")]
    );
    assert!(dead.contains("\"sink\":\"moved\"") && dead.contains("redirects to /moved-here"), "{dead}");

    // Down during a kill -9 and a restart: the alert waits in the spool and arrives afterwards.
    let spool = a.d.state("spool/down");
    assert_eq!(fs::read_dir(&spool).expect("spool").count(), 1, "the alert is on disk");
    n.kill9();
    let receiver = HttpReceiver::on_port(down_port);
    let n = Notifier::run(&a.d.config);
    let reqs = receiver.wait(WAIT, |r| !r.is_empty());
    assert_eq!(reqs.len(), 1, "delivered after the restart; stderr:\n{}", n.stderr());
    assert_eq!(reqs[0].json()["event"]["user"], "retryuser");
    let deadline = std::time::Instant::now() + WAIT;
    while fs::read_dir(&spool).expect("spool").count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::read_dir(&spool).expect("spool").count(), 0, "removed once confirmed");
    assert_eq!(flaky.requests().len(), 4, "the delivered alert is not sent again after the restart");
}

#[test]
fn hundred_new_addresses_give_at_most_ten_alerts_and_one_summary() {
    if !kernel_tests_enabled() {
        return;
    }
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntcap");
    let a = AlertLab::new(&format!(
        "max_per_minute = 10\n[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"",
        hook.url("/hook")
    ));
    let n = Notifier::run(&a.d.config);
    let started = std::time::Instant::now();
    a.login(&service, "capuser", "198.51.100.{i}", 100);
    assert!(started.elapsed() < Duration::from_secs(10), "100 logins within 10 s");
    let events = n.json_until(WAIT, |e| e.iter().filter(|v| v["event"] == "session_open").count() >= 100);
    let opens: Vec<&Value> = events.iter().filter(|v| v["event"] == "session_open").collect();
    assert_eq!(opens.len(), 100, "stdout shows every event");
    assert!(opens.iter().all(|e| e["alert"] == true));
    // The summary comes when the minute is over.
    let reqs = hook.wait(Duration::from_secs(80), |r| r.iter().any(|q| q.json()["kind"] == "summary"));
    let kinds: Vec<String> = reqs.iter().map(|r| r.json()["kind"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "login").count(), 10, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "summary").count(), 1, "{kinds:?}");
    let summary = reqs.iter().find(|r| r.json()["kind"] == "summary").expect("summary").json();
    assert!(summary["body"].as_str().unwrap().starts_with("90 alert(s) held back"), "{summary}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hook.requests().len(), 11, "nothing more after the summary");
    // What `run --json` printed and what the webhook received follow the shipped schema.
    assert_schema_valid(None, &events);
    assert_schema_valid(Some("webhook"), &reqs.iter().map(|r| r.json()).collect::<Vec<_>>());
}

#[test]
fn test_alert_reports_success_or_the_exact_failure_per_sink() {
    let ok = HttpReceiver::start();
    let rejecting = HttpReceiver::start();
    rejecting.respond_with(&[400]);
    let lab = Lab::new();
    let config = lab.path("notifier.toml");
    fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[sink]]\nname = \"ok\"\ntype = \"webhook\"\nurl = \"{}\"\n\
             [[sink]]\nname = \"rejecting\"\ntype = \"gotify\"\nserver = \"{}\"\ntoken = \"t\"\n\
             [[sink]]\nname = \"down\"\ntype = \"ntfy\"\nserver = \"http://127.0.0.1:{}\"\ntopic = \"x\"\n",
            lab.path("state").display(),
            ok.url("/hook"),
            rejecting.url(""),
            unused_port()
        ),
    )
    .expect("config");
    let out = Command::new(notifier_bin())
        .args(["test-alert", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .output()
        .expect("test-alert");
    assert!(!out.status.success(), "a failing sink makes test-alert fail");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "sink ok (webhook): ok", "{text}");
    assert!(
        lines[1].starts_with("sink rejecting (gotify): FAILED: HTTP 400") && lines[1].contains("permanent"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("sink down (ntfy): FAILED: connection failed") && lines[2].contains("temporary"),
        "{text}"
    );
    assert_eq!(ok.requests().len(), 1);
    assert_eq!(ok.requests()[0].json()["kind"], "test");
    let out = run(Command::new(notifier_bin()).args(["test-alert", "--sink", "ok", "--config"]).arg(&config));
    assert_eq!(out.trim(), "sink ok (webhook): ok");
}

#[test]
fn syslog_gets_an_rfc5424_record_and_stopping_sends_a_health_alert() {
    if !kernel_tests_enabled() {
        return;
    }
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").expect("UDP collector");
    collector.set_read_timeout(Some(WAIT)).expect("timeout");
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntsyslog");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"collector\"\ntype = \"syslog\"\naddress = \"udp:127.0.0.1:{}\"\nfacility = \"authpriv\"\n\
         when = {{ verdicts = [\"first_login\"] }}\n\
         [[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\nwhen = {{ users = [\"nobody-logs-in-as-this\"] }}",
        collector.local_addr().expect("addr").port(),
        hook.url("/hook")
    ));
    let n = Notifier::run(&a.d.config);
    a.login(&service, "sysuser\"]", "198.51.100.5", 1);
    let mut buf = [0u8; 4096];
    let len = collector.recv(&mut buf).expect("a syslog record");
    let record = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(record.starts_with("<84>1 "), "authpriv.warning, RFC 5424 version 1: {record}");
    assert!(record.contains(" web-test-1 notifier "), "{record}");
    assert!(
        record.contains(r#"user="sysuser\"\]""#) && record.contains(r#"ip="198.51.100.5""#),
        "escaped SD: {record}"
    );
    assert!(record.contains(r#"verdict="first_login""#), "{record}");
    assert!(hook.requests().is_empty(), "the webhook's `when` filter excludes this user");

    // SIGTERM: a health alert says the daemon stopped (it passes every `when` filter on users).
    assert!(n.terminate().success());
    let reqs = hook.wait(WAIT, |r| !r.is_empty());
    assert_eq!(reqs.len(), 1, "one health alert");
    let j = reqs[0].json();
    assert_eq!(j["kind"], "health");
    assert!(j["body"].as_str().unwrap().contains("stopping"), "{j}");
}

#[test]
fn libpam_replaced_by_an_upgrade_is_reattached_and_reported() {
    if !kernel_tests_enabled() {
        return;
    }
    let hook = HttpReceiver::start();
    let service = PamService::permit("ntupgrade");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\nwhen = {{ users = [\"nobody-logs-in-as-this\"] }}",
        hook.url("/hook")
    ));
    let n = Notifier::run(&a.d.config);
    a.login(&service, "before-upgrade", "198.51.100.61", 1);
    wait_for(&n, "before-upgrade", "session_open");

    // What dpkg does: write the new library beside the old one, then rename it over it.
    let libpam = a.d.lab.path("libpam.so.0");
    let staged = a.d.lab.path("libpam.so.0.dpkg-new");
    fs::copy(&libpam, &staged).expect("staging the new libpam");
    fs::rename(&staged, &libpam).expect("replacing libpam");

    let reqs = hook.wait(WAIT, |r| !r.is_empty());
    assert_eq!(reqs.len(), 1, "one health alert; stderr:\n{}", n.stderr());
    let body = reqs[0].json();
    assert_eq!(body["kind"], "health");
    assert!(body["body"].as_str().unwrap().contains("was replaced"), "{body}");
    // A login through the new file (a new inode) is still seen.
    a.login(&service, "after-upgrade", "198.51.100.62", 1);
    let (e, _) = wait_for(&n, "after-upgrade", "session_open");
    assert_eq!(e["peer"]["ip"], "198.51.100.62");
}

#[test]
fn a_429_is_waited_out_and_pushovers_quota_gives_one_health_alert_and_no_retries() {
    if !kernel_tests_enabled() {
        return;
    }
    let limited = HttpReceiver::start();
    limited.respond_with(&[429]);
    // Pushover takes one message, then its monthly quota is spent.
    let pushover = HttpReceiver::start();
    pushover.pushover_quota(1);
    let ops = HttpReceiver::start();
    let lab = AlertLab::new(&format!(
        "[[sink]]\nname = \"limited\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[sink]]\nname = \"phone\"\ntype = \"pushover\"\napi_base = \"{}\"\ntoken = \"{PO_TOKEN}\"\nuser_key = \"{PO_USER}\"\n\
         [[sink]]\nname = \"ops\"\ntype = \"webhook\"\nurl = \"{}\"",
        limited.url("/hook"),
        pushover.url(""),
        ops.url("/ops")
    ));
    let n = Notifier::run(&lab.d.config);
    let service = PamService::permit("ntlimit");
    let user = unique("ntl");
    lab.login(&service, &user, "198.51.100.{i}", 3);
    let ours = |r: &Request| r.json()["event"]["user"] == user.as_str();
    // The webhook: one 429, then a pause of at least the 2 s asked, then all three.
    let reqs = limited.wait(WAIT, |r| r.iter().filter(|r| r.status == 200 && ours(r)).count() == 3);
    let reqs: Vec<&Request> = reqs.iter().filter(|r| ours(r)).collect();
    assert_eq!(reqs.len(), 4, "one refused, then three delivered: {reqs:?}");
    assert_eq!(reqs[0].status, 429);
    let paused = reqs[1].received.duration_since(reqs[0].received).expect("in order");
    assert!(paused >= Duration::from_millis(1900), "the next request came after {paused:?}, before Retry-After");
    // Pushover: each alert is tried once (the quota is spent for the month), and one health alert
    // through the other sinks says why.
    let health = |r: &Request| r.json()["kind"] == "health";
    let got = ops.wait(WAIT, |r| r.iter().any(health));
    let healths: Vec<Value> = got.iter().filter(|r| health(r)).map(Request::json).collect();
    std::thread::sleep(Duration::from_secs(5));
    let healths_later = ops.requests().iter().filter(|r| health(r)).count();
    assert_eq!(healths_later, 1, "{healths:?}");
    assert!(healths[0]["reason"].as_str().unwrap().contains("quota"), "{healths:?}");
    let tries: Vec<u16> = pushover.requests().iter().map(|r| r.status).collect();
    assert!(tries.len() <= 4, "{tries:?}: three alerts and the health alert, no retries");
    assert_eq!((tries[0], tries[1]), (200, 429), "one accepted, then the quota: {tries:?}");
    assert_eq!(ops.requests().iter().filter(|r| ours(r)).count(), 3);
    drop(n);
}

#[test]
fn a_start_failure_repeated_by_restarts_sends_one_health_alert() {
    if !kernel_tests_enabled() {
        return;
    }
    let ops = HttpReceiver::start();
    // libc is an ELF library with no PAM symbols: the probes cannot attach, a failure that a
    // restart may fix (exit 1), so systemd keeps restarting it.
    let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libc");
    let d = DaemonLab::new(|_| {
        format!(
            "[capture]\nlibpam = [\"{libc}\"]\n[[sink]]\nname = \"ops\"\ntype = \"webhook\"\nurl = \"{}\"",
            ops.url("/ops")
        )
    });
    for _ in 0..3 {
        let out = Command::new(notifier_bin()).args(["run", "--config"]).arg(&d.config).output().expect("notifier");
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let health: Vec<Value> = ops.requests().iter().map(Request::json).filter(|a| a["kind"] == "health").collect();
    assert_eq!(health.len(), 1, "{health:#?}");
    assert!(health[0]["reason"].as_str().unwrap().contains("could not start watching logins"), "{health:#?}");
}

/// An HTTPS receiver on 127.0.0.1 whose certificate a test CA signed: returns the CA's PEM path,
/// the port, and the server (killed on drop through the guard).
fn https_receiver(lab: &Lab) -> (PathBuf, u16, ChildGuard) {
    let p = |f: &Path| f.display().to_string();
    let ca = TestCa::new(lab, "ca");
    let (cert, key) = ca.issue("srv", false);
    let port = unused_port();
    let script = format!(
        "import http.server, ssl\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_POST(self):\n\
         \x20       body = self.rfile.read(int(self.headers['Content-Length']))\n\
         \x20       open('{got}', 'ab').write(body + b'\\n')\n\
         \x20       self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()\n\
         s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('{cert}', '{key}')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        got = p(&lab.path("got")),
        cert = p(&cert),
        key = p(&key),
    );
    let child = Command::new("python3").args(["-c", &script]).stderr(Stdio::null()).spawn().expect("python3");
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the HTTPS receiver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (ca.cert, port, ChildGuard(child))
}

/// Kills the child on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_webhook_behind_a_private_ca_is_delivered_with_ca_file_and_refused_without() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::new();
    let (ca, port, _server) = https_receiver(&lab);
    let config = lab.path("notifier.toml");
    fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n\
             [[sink]]\nname = \"trusted\"\ntype = \"webhook\"\nurl = \"https://127.0.0.1:{port}/hook\"\nca_file = \"{}\"\n\
             [[sink]]\nname = \"untrusted\"\ntype = \"webhook\"\nurl = \"https://127.0.0.1:{port}/hook\"\n",
            lab.path("state").display(),
            ca.display()
        ),
    )
    .expect("config");
    let out = Command::new(notifier_bin()).args(["test-alert", "--config"]).arg(&config).output().expect("notifier");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "one sink fails: {text}");
    assert!(text.contains("sink trusted (webhook): ok"), "{text}");
    let refused = text.lines().find(|l| l.contains("sink untrusted")).unwrap_or_else(|| panic!("{text}"));
    assert!(refused.to_lowercase().contains("certificate"), "refused for its certificate: {refused}");
    let got = fs::read_to_string(lab.path("got")).expect("the receiver got the trusted sink's alert");
    assert_eq!(got.lines().count(), 1, "{got}");
}

#[test]
fn syslog_on_a_local_socket_reaches_a_real_rsyslog_with_program_facility_and_severity() {
    if !kernel_tests_enabled() {
        return;
    }
    // A private rsyslogd: its own socket, work directory and output file, in the BSD parser's
    // terms: program name, facility, severity, message.
    let lab = Lab::new();
    let (socket, out) = (lab.path("log.sock"), lab.path("out.log"));
    fs::write(
        lab.path("rsyslog.conf"),
        format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
             input(type=\"imuxsock\" Socket=\"{socket}\")\n\
             template(name=\"fields\" type=\"string\" string=\"%programname%|%procid%|%syslogfacility-text%|%syslogseverity-text%|%msg%\\n\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"fields\")\n",
            dir = lab.dir.display(),
            socket = socket.display(),
            out = out.display()
        ),
    )
    .expect("rsyslog.conf");
    let rsyslogd = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(lab.path("rsyslog.conf"))
        .arg("-i")
        .arg(lab.path("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd (install rsyslog)");
    let _rsyslogd = ChildGuard(rsyslogd);
    let deadline = std::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "rsyslogd did not open its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let service = PamService::permit("ntrsyslog");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"local\"\ntype = \"syslog\"\naddress = \"unix:{}\"\nfacility = \"authpriv\"",
        socket.display()
    ));
    let n = Notifier::run(&a.d.config);
    a.login(&service, "rsysuser", "198.51.100.6", 1);
    let deadline = std::time::Instant::now() + WAIT;
    let line = loop {
        let text = fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("rsysuser")) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "nothing reached rsyslog: {text:?}\n{}", n.stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    let fields: Vec<&str> = line.splitn(5, '|').collect();
    assert_eq!(fields[..4], ["notifier", &n.pid().to_string(), "authpriv", "warning"], "{line}");
    assert!(fields[4].contains("198.51.100.6") && fields[4].contains(r#"verdict="first_login""#), "{line}");
}

/// `notifier ARGS --config CONFIG`: its exit code and stdout (stderr on failure, for the message).
fn notifier_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(notifier_bin()).args(args).arg("--config").arg(config).output().expect("running notifier");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `notifier status --json` until `done` holds for it (the daemon writes within a second).
fn status_until(config: &Path, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, out, err) = notifier_cli(config, &["status", "--json"]);
        let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}{err}"));
        if done(&status) || std::time::Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_shows_probes_last_login_sinks_and_spool_and_retry_resends_a_dead_letter() {
    if !kernel_tests_enabled() {
        return;
    }
    let ok = HttpReceiver::start();
    let picky = HttpReceiver::start();
    picky.respond_with(&[400]);
    let service = PamService::permit("ntstatus");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"ok\"\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[sink]]\nname = \"picky\"\ntype = \"webhook\"\nurl = \"{}\"",
        ok.url("/hook"),
        picky.url("/hook")
    ));
    let config = &a.d.config;
    let (code, out, _) = notifier_cli(config, &["status"]);
    assert_eq!(code, 3, "not running yet: {out}");
    assert!(out.starts_with("notifier is not running (it has not run with state_dir"), "{out}");
    assert!(out.contains("sink picky: not running; 0 pending, 0 dead letters"), "{out}");

    let n = Notifier::run(config);
    a.login(&service, "statususer", "198.51.100.77", 1);
    wait_for(&n, "statususer", "session_open");
    let s = status_until(config, |s| {
        s["status"]["sinks"][1]["failing"].is_object() && s["status"]["sinks"][0]["delivered"] == 1
    });
    assert_eq!(s["running"], true, "{s:#}");
    let st = &s["status"];
    assert_eq!(st["pid"], n.pid(), "{s:#}");
    let libpam = a.d.lab.path("libpam.so.0");
    let probes = st["probes"].as_array().expect("probes");
    assert!(
        probes.iter().any(|p| p["role"] == "libpam"
            && p["probes"].as_u64() >= Some(10)
            && fs::canonicalize(p["file"].as_str().unwrap()).ok() == fs::canonicalize(&libpam).ok()),
        "the private libpam with its probes: {s:#}"
    );
    let last = &st["last_event"];
    assert_eq!(
        (&last["user"], &last["service"], &last["rhost"]),
        (&json!("statususer"), &json!(service.name), &json!("198.51.100.77")),
        "{s:#}"
    );
    assert_eq!(st["sinks"][0]["name"], "ok");
    assert!(st["sinks"][0]["failing"].is_null(), "{s:#}");
    assert_eq!(st["sinks"][1]["name"], "picky");
    assert!(st["sinks"][1]["failing"]["error"].as_str().unwrap().contains("400"), "{s:#}");
    assert_eq!(s["spool"]["dead_letters"], json!([["picky", 1]]), "{s:#}");

    let (code, text, _) = notifier_cli(config, &["status"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with(&format!("notifier is running: pid {},", n.pid())), "{text}");
    assert!(text.contains(&format!(" statususer from 198.51.100.77 ({})", service.name)), "{text}");
    assert!(text.contains("spool:       0 alerts pending, 1 dead letter (notifier spool list)"), "{text}");
    assert!(text.contains("sink ok: ok, 1 delivered"), "{text}");
    assert!(text.contains("sink picky: failing since"), "{text}");

    // The dead letter, listed and sent again; the receiver now takes it, and the daemon says so.
    let (_, list, _) = notifier_cli(config, &["spool", "list", "--json"]);
    let list: Value = serde_json::from_str(&list).expect("spool list --json");
    assert_eq!(list["pending"], json!([]), "{list:#}");
    let dead = &list["dead_letters"][0];
    assert_eq!((&dead["sink"], &dead["alert"]["user"]), (&json!("picky"), &json!("statususer")), "{list:#}");
    let id = dead["alert"]["id"].as_str().expect("alert id").to_string();
    let (_, text, _) = notifier_cli(config, &["spool", "list"]);
    assert!(text.contains(&format!("  {id}  picky  ")) && text.contains("HTTP 400"), "{text}");
    let (code, _, err) = notifier_cli(config, &["spool", "retry", "no-such-id"]);
    assert_eq!(code, 1);
    assert!(err.contains("no dead letter to send again (not found: no-such-id)"), "{err}");
    let (code, out, err) = notifier_cli(config, &["spool", "retry", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("1 dead letter put back in the spool; notifier (pid {}) is delivering it now.\n", n.pid()));
    let reqs = picky.wait(WAIT, |r| r.len() == 2);
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), [400, 200]);
    assert_eq!(reqs[1].json()["event"]["user"], "statususer");
    assert_eq!(reqs[0].header("idempotency-key"), reqs[1].header("idempotency-key"), "the same alert");
    assert_eq!(fs::read_to_string(a.d.state("dead-letter.jsonl")).expect("dead letters"), "");
    let s = status_until(config, |s| s["status"]["sinks"][1]["delivered"] == 1);
    assert!(s["status"]["sinks"][1]["failing"].is_null(), "delivered since: {s:#}");
    assert_eq!(s["spool"]["dead_letters"], json!([]), "{s:#}");
    assert_eq!(ok.requests().len(), 1, "the other sink is not sent it again");

    n.terminate();
    let (code, text, _) = notifier_cli(config, &["status"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.starts_with("notifier is not running (stopped at "), "{text}");
}

#[test]
fn a_long_alert_is_cut_to_each_services_limits_and_every_service_accepts_it() {
    if !kernel_tests_enabled() {
        return;
    }
    let http = HttpReceiver::start();
    let base = http.url("");
    // Title and body far over every limit, with characters that count double in UTF-16 (the
    // emoji) or grow when escaped for Slack (& < >).
    let title = "{% for i in range(120) %}{{ user }} \u{1f600} {% endfor %}";
    let body = "{% for i in range(900) %}{{ user }} & <b> \u{1f600} {% endfor %}";
    let templates = format!("title = \"{title}\"\nbody = \"{body}\"\n");
    let a = AlertLab::new(&format!(
        "[[sink]]\nname = \"po\"\ntype = \"pushover\"\napi_base = \"{base}/pushover\"\ntoken = \"{PO_TOKEN}\"\n\
         user_key = \"{PO_USER}\"\npriority = 2\nretry = 60\nexpire = 3600\n{templates}\
         [[sink]]\nname = \"ntfy\"\ntype = \"ntfy\"\nserver = \"{base}/ntfy\"\ntopic = \"logins_web-1\"\npriority = 5\n{templates}\
         [[sink]]\nname = \"gotify\"\ntype = \"gotify\"\nserver = \"{base}/gotify\"\ntoken = \"AbC\"\npriority = 8\n{templates}\
         [[sink]]\nname = \"tg\"\ntype = \"telegram\"\napi_base = \"{base}/tg\"\ntoken = \"1:A\"\nchat_id = \"-100\"\n{templates}\
         [[sink]]\nname = \"slack\"\ntype = \"slack\"\nurl = \"{base}/slack/T/B/X\"\n{templates}\
         [[sink]]\nname = \"discord\"\ntype = \"discord\"\nurl = \"{base}/discord/api/webhooks/1/t\"\n{templates}"
    ));
    let (code, _, err) = notifier_cli(&a.d.config, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    let n = Notifier::run(&a.d.config);
    let service = PamService::permit("ntlong");
    a.login(&service, "longuser", "198.51.100.55", 1);
    wait_for(&n, "longuser", "session_open");
    http.wait(WAIT, |r| r.len() >= 6);
    std::thread::sleep(Duration::from_millis(500));
    let reqs: Vec<Request> = http.requests();
    assert_eq!(reqs.len(), 6, "one request per service, none retried: {reqs:#?}");
    for r in &reqs {
        assert_eq!((r.status, &r.rejected), (200, &None), "{} refused it", r.path);
    }
    // Each was cut (the ellipsis), as close to its limit as the characters allow.
    let by = |prefix: &str| reqs.iter().find(|r| r.path.starts_with(prefix)).expect(prefix);
    let po = by("/pushover").form();
    let field = |k: &str| po.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!((field("message").chars().count(), field("title").chars().count()), (1024, 250));
    assert_eq!(field("priority"), "2");
    let ntfy = by("/ntfy").json();
    let message = ntfy["message"].as_str().unwrap();
    assert!(message.len() > 4090 && message.ends_with('\u{2026}'), "{}", message.len());
    let tg = by("/tg").json()["text"].as_str().unwrap().to_string();
    assert!(tg.encode_utf16().count() >= 4094 && tg.ends_with('\u{2026}'), "{}", tg.encode_utf16().count());
    let slack = by("/slack").json()["text"].as_str().unwrap().to_string();
    assert!(slack.chars().count() > 3990 && slack.ends_with('\u{2026}'), "{}", slack.chars().count());
    assert!(!slack.contains("<b>") && slack.contains("&lt;b&gt;"), "escaped");
    let discord = by("/discord").json()["content"].as_str().unwrap().to_string();
    assert!(discord.encode_utf16().count() >= 1998 && discord.ends_with('\u{2026}'));
    assert_eq!(by("/gotify").json()["priority"], 8);
}
