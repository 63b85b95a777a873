//! The events notifier reports, and their two output forms: one readable line, or one JSON object
//! per line (JSON Lines). Event data is escaped for each: the text form escapes control characters,
//! backslashes and spaces, so one event is always one line that splits on spaces; the JSON form is
//! valid JSON whatever the input, with bytes that are not UTF-8 written as `\xNN`.

use std::{fmt::Write as _, io};

use serde::Serialize;

use crate::{authinfo::AuthInfo, peer::Peer};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SessionOpen,
    SessionClose,
    AuthSuccess,
    AuthFailure,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionOpen => "session_open",
            Self::SessionClose => "session_close",
            Self::AuthSuccess => "auth_success",
            Self::AuthFailure => "auth_failure",
        }
    }
}

/// One login event. Field order is the JSON order; absent values are `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoginEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub event: EventKind,
    pub service: Option<String>,
    pub user: Option<String>,
    pub peer: Option<Peer>,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub ruser: Option<String>,
    pub auth: Option<AuthInfo>,
    /// For `auth_*`: the PAM result name (`PAM_SUCCESS`, `PAM_AUTH_ERR`, …).
    pub pam_result: Option<String>,
    /// The process that made the PAM call.
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Real uid of that process.
    pub caller_uid: u32,
    /// The uid the user's session runs as (from the sshd witness); null when not seen.
    pub uid: Option<u32>,
    /// Its parent's pid (for ancestry); not part of the event stream.
    #[serde(skip)]
    pub ppid: u32,
    /// The process that started this login: the `pam_start` caller, or sshd's per-connection
    /// process. Not part of the event stream.
    #[serde(skip)]
    pub owner_pid: u32,
    /// The process (and every process that touched this PAM handle) ran as root from a root-owned
    /// executable. A login reported by anything else may be forged.
    pub trusted: bool,
    pub host: String,
    /// Stable id shared by every event of one PAM session.
    pub session: String,
    /// Who saw this event: `pam` (the libpam probes), `sshd` (the sshd witness), or both.
    pub witnesses: Vec<&'static str>,
    /// Witnesses that watch this login's path but did not see it: `pam` when sshd logged a user in
    /// without the PAM session its configuration calls for. Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missed_by: Vec<&'static str>,
    /// For a PAM session started inside an SSH login (`su`, `sudo` in that login's shell): the
    /// login it came from. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The kernel's key of that login's connection (its process, and the time of its `accept()`),
    /// which the sshd witness resolves into `origin`. Not part of the event stream.
    #[serde(skip)]
    pub origin_conn: Option<(u32, u64)>,
    /// Only on `session_close`: null when the open was not seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<Option<u64>>,
    /// Names of the fields that were cut to fit; absent when none were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<&'static str>,
}

/// The SSH login a PAM session was started in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The SSH client's address.
    pub peer: Option<Peer>,
    /// The user who logged in over SSH.
    pub user: Option<String>,
    /// The `session` of that login's events.
    pub session: String,
}

/// `alice@203.0.113.7:52144`, with `-` for what is not known.
impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.user.as_deref().unwrap_or("-");
        match self.peer {
            Some(peer) => write!(f, "{user}@{peer}"),
            None => write!(f, "{user}@-"),
        }
    }
}

/// Records the kernel or userspace could not deliver, reported as their own event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostEvent {
    pub time: String,
    pub event: &'static str,
    /// Lost since the previous `events_lost` line, by cause.
    pub ring_full: u64,
    pub inflight_full: u64,
    pub handles_full: u64,
    pub read_failed: u64,
    pub no_entry: u64,
    pub session_table_full: u64,
    /// Records of unprivileged users' processes over their budget, counted and not emitted.
    pub budget: u64,
    /// Sum of the above.
    pub lost: u64,
    /// Everything lost since notifier started.
    pub total: u64,
    /// Of `lost`: records of root's own processes (sshd, login, cron, systemd), whose capacity no
    /// user can take, so this is 0 unless the host itself is overloaded.
    pub trusted: u64,
    /// Of `lost`: records of processes that users started (setuid programs such as su and sudo
    /// too), which a user controls and can flood.
    pub untrusted: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// The version of the JSON events and webhook bodies, described by `schema/event.schema.json`.
/// It changes only when a field is removed or changes meaning; new fields may come within a version.
pub const SCHEMA_VERSION: u32 = 1;

/// A JSON event with its schema version as the first key.
#[derive(Serialize)]
struct Versioned<'a, T: Serialize> {
    schema: u32,
    #[serde(flatten)]
    event: &'a T,
}

/// `event` as a JSON value with its schema version, as the fleet stream carries it.
pub fn json_value(event: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(Versioned { schema: SCHEMA_VERSION, event }).unwrap_or_default()
}

/// Writes `event` as one JSON line, with its schema version.
pub fn json_line(w: &mut impl io::Write, event: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, &Versioned { schema: SCHEMA_VERSION, event })?;
    w.write_all(b"\n")
}

/// Writes one event as one line.
pub fn write_login(w: &mut impl io::Write, format: Format, e: &LoginEvent) -> io::Result<()> {
    match format {
        Format::Json => json_line(w, e),
        Format::Text => writeln!(w, "{}", text_line(e)),
    }
}

pub fn write_lost(w: &mut impl io::Write, format: Format, e: &LostEvent) -> io::Result<()> {
    match format {
        Format::Json => json_line(w, e),
        Format::Text => writeln!(
            w,
            "{} events_lost lost={} trusted={} untrusted={} ring_full={} inflight_full={} handles_full={} read_failed={} no_entry={} budget={} session_table_full={} total={}",
            e.time, e.lost, e.trusted, e.untrusted, e.ring_full, e.inflight_full, e.handles_full, e.read_failed,
            e.no_entry, e.budget, e.session_table_full, e.total
        ),
    }
}

/// `2026-11-24T18:07:50.123Z session_open user=alice from=203.0.113.7:52144 service=sshd
/// method=publickey pid=4242/sshd-session`, plus what else is known.
pub fn text_line(e: &LoginEvent) -> String {
    let mut line = format!("{} {}", e.time, e.event.as_str());
    let field = |line: &mut String, key: &str, value: Option<&str>| {
        let _ = write!(line, " {key}={}", value.map_or_else(|| "-".to_string(), escape_text));
    };
    field(&mut line, "user", e.user.as_deref());
    match e.peer.map(|p| p.to_string()) {
        Some(from) => field(&mut line, "from", Some(&from)),
        None => field(&mut line, "from", e.rhost.as_deref()),
    }
    field(&mut line, "service", e.service.as_deref());
    field(&mut line, "method", e.auth.as_ref().and_then(|a| a.method.as_deref()));
    if let Some(fp) = e.auth.as_ref().and_then(|a| a.fingerprint.as_deref()) {
        field(&mut line, "key", Some(fp));
    }
    if let Some(tty) = e.tty.as_deref() {
        field(&mut line, "tty", Some(tty));
    }
    if let Some(origin) = &e.origin {
        field(&mut line, "origin", Some(&origin.to_string()));
    }
    if let Some(result) = e.pam_result.as_deref() {
        field(&mut line, "result", Some(result));
    }
    if let Some(Some(ms)) = e.duration_ms {
        let _ = write!(line, " duration={}.{:03}s", ms / 1000, ms % 1000);
    }
    let _ = write!(line, " pid={}/{}", e.pid, escape_text(&e.comm));
    if !e.witnesses.is_empty() {
        let _ = write!(line, " seen_by={}", e.witnesses.join(","));
    }
    if !e.missed_by.is_empty() {
        let _ = write!(line, " missed_by={}", e.missed_by.join(","));
    }
    if !e.trusted {
        line.push_str(" trusted=no");
    }
    if !e.truncated.is_empty() {
        let _ = write!(line, " truncated={}", e.truncated.join(","));
    }
    line
}

/// Escapes control characters, backslashes and spaces so a value stays one space-free token; and
/// every character that could make one line look like two, or reorder what is shown
/// ([`is_deceptive`]), visibly.
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' ' => out.push_str("\\x20"),
            c if c.is_control() || is_deceptive(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Text for a terminal, spaces kept: control characters and misleading ones ([`is_deceptive`])
/// are shown as `\u{…}` escapes, so a value cannot move the cursor, clear the screen, or pass for
/// two lines.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || is_deceptive(c) {
            let _ = write!(out, "{}", c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A character that is not a control character but misleads a reader of a line: a space other than
/// U+0020 (U+00A0, U+2000..U+200A, U+3000, …), the line and paragraph separators U+2028 and
/// U+2029, a bidirectional control (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F, U+061C), or
/// an invisible one (U+200B..U+200D, U+2060..U+2064, U+FEFF, U+180E, U+00AD).
pub fn is_deceptive(c: char) -> bool {
    (c.is_whitespace() && c != ' ' && !c.is_control())
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{061c}'
                | '\u{feff}'
                | '\u{180e}'
                | '\u{00ad}'
        )
}

/// Bytes from the probes as text: valid UTF-8 is kept, every other byte becomes `\xNN`.
pub fn bytes_to_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The name of a PAM result code (Linux-PAM's `_pam_types.h`).
pub fn pam_result_name(code: i32) -> String {
    const NAMES: [&str; 32] = [
        "PAM_SUCCESS",
        "PAM_OPEN_ERR",
        "PAM_SYMBOL_ERR",
        "PAM_SERVICE_ERR",
        "PAM_SYSTEM_ERR",
        "PAM_BUF_ERR",
        "PAM_PERM_DENIED",
        "PAM_AUTH_ERR",
        "PAM_CRED_INSUFFICIENT",
        "PAM_AUTHINFO_UNAVAIL",
        "PAM_USER_UNKNOWN",
        "PAM_MAXTRIES",
        "PAM_NEW_AUTHTOK_REQD",
        "PAM_ACCT_EXPIRED",
        "PAM_SESSION_ERR",
        "PAM_CRED_UNAVAIL",
        "PAM_CRED_EXPIRED",
        "PAM_CRED_ERR",
        "PAM_NO_MODULE_DATA",
        "PAM_CONV_ERR",
        "PAM_AUTHTOK_ERR",
        "PAM_AUTHTOK_RECOVERY_ERR",
        "PAM_AUTHTOK_LOCK_BUSY",
        "PAM_AUTHTOK_DISABLE_AGING",
        "PAM_TRY_AGAIN",
        "PAM_IGNORE",
        "PAM_ABORT",
        "PAM_AUTHTOK_EXPIRED",
        "PAM_MODULE_UNKNOWN",
        "PAM_BAD_ITEM",
        "PAM_CONV_AGAIN",
        "PAM_INCOMPLETE",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).map_or_else(|| format!("PAM_{code}"), |s| (*s).to_string())
}

/// A key login from 203.0.113.7:52144, for tests of every stage.
#[cfg(test)]
pub fn sample_login() -> LoginEvent {
    LoginEvent {
        time: "2026-11-24T18:07:50.123Z".into(),
        event: EventKind::SessionOpen,
        service: Some("sshd".into()),
        user: Some("alice".into()),
        peer: Some(Peer { ip: "203.0.113.7".parse().unwrap(), port: Some(52144) }),
        rhost: Some("203.0.113.7".into()),
        tty: Some("ssh".into()),
        ruser: None,
        auth: Some(AuthInfo {
            method: Some("publickey".into()),
            key_type: Some("ssh-ed25519".into()),
            fingerprint: Some("SHA256:abc".into()),
        }),
        pam_result: None,
        pid: 4242,
        comm: "sshd-session".into(),
        exe: Some("/usr/lib/openssh/sshd-session".into()),
        caller_uid: 0,
        uid: None,
        ppid: 1,
        owner_pid: 4242,
        trusted: true,
        host: "web-1".into(),
        session: "0123456789abcdef".into(),
        witnesses: vec!["pam", "sshd"],
        missed_by: vec![],
        origin: None,
        origin_conn: None,
        duration_ms: None,
        truncated: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_documented_shape() {
        let mut out = Vec::new();
        write_login(&mut out, Format::Json, &sample_login()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["event"], "session_open");
        assert_eq!(v["peer"]["ip"], "203.0.113.7");
        assert_eq!(v["peer"]["port"], 52144);
        assert_eq!(v["auth"]["fingerprint"], "SHA256:abc");
        assert_eq!(v["ruser"], serde_json::Value::Null);
        assert!(v.get("duration_ms").is_none() && v.get("truncated").is_none());
    }

    #[test]
    fn text_line_is_one_escaped_line() {
        let mut e = sample_login();
        e.user = Some("evil\nuser=root x\u{1b}[31m\\".into());
        e.trusted = false;
        e.truncated = vec!["user"];
        let line = text_line(&e);
        assert_eq!(
            line,
            "2026-11-24T18:07:50.123Z session_open user=evil\\nuser=root\\x20x\\u{1b}[31m\\\\ \
             from=203.0.113.7:52144 service=sshd method=publickey key=SHA256:abc tty=ssh \
             pid=4242/sshd-session seen_by=pam,sshd trusted=no truncated=user"
        );
    }

    #[test]
    fn ipv6_peer_is_bracketed_and_close_has_duration() {
        let mut e = sample_login();
        e.event = EventKind::SessionClose;
        e.peer = Some(Peer { ip: "::1".parse().unwrap(), port: Some(50000) });
        e.duration_ms = Some(Some(1234));
        let line = text_line(&e);
        assert!(line.contains(" from=[::1]:50000 "), "{line}");
        assert!(line.contains(" duration=1.234s "), "{line}");
    }

    #[test]
    fn non_utf8_bytes_are_escaped() {
        assert_eq!(bytes_to_text(b"ok\xff\xfe\"q"), "ok\\xff\\xfe\"q");
        let json = serde_json::to_string(&bytes_to_text(b"a\xffb\n")).unwrap();
        assert_eq!(json, "\"a\\\\xffb\\n\"");
    }

    #[test]
    fn pam_result_names() {
        assert_eq!(pam_result_name(0), "PAM_SUCCESS");
        assert_eq!(pam_result_name(7), "PAM_AUTH_ERR");
        assert_eq!(pam_result_name(99), "PAM_99");
        assert_eq!(pam_result_name(-1), "PAM_-1");
    }
}
