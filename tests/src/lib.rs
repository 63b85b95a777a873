//! Harness for notifier's integration tests: RAII guards for everything a test creates (PAM service
//! files, users, a private sshd, notifier itself), so that every test cleans up after itself even
//! when it fails.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub use serde_json::Value;

mod container;
mod daemon;
mod dns;
mod guards;
mod http;
mod mmdb;
mod nats;
mod nats_jwt;
pub mod rules;
mod schema;
mod smtp;
mod sshd;
mod tls;

pub use container::*;
pub use daemon::*;
pub use dns::*;
pub use guards::*;
pub use http::*;
pub use mmdb::*;
pub use nats::*;
pub use nats_jwt::*;
pub use schema::*;
pub use smtp::*;
pub use sshd::*;
pub use tls::*;

/// True when the kernel tests can run. Without root they are skipped with a reason, except under
/// `CI=true`, where a skip would hide a broken setup and so is a failure.
pub fn kernel_tests_enabled() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let reason = "kernel tests need root (to load eBPF, add users and PAM services)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI must run them as root");
    }
    eprintln!("skipped: {reason}");
    false
}

/// A name no other test or run uses: `prefix` + pid + counter, short enough for useradd.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A directory `cargo xtask setup` prepares: `env` (set by `cargo xtask test`) or `default` under
/// the workspace, if it holds `marker`. `None` (with `what` and the fix printed) otherwise, which
/// under `CI=true` is a failure: a test that cannot run must not pass quietly there.
pub(crate) fn set_up(env: &str, default: &str, marker: &str, what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| workspace_root().join(default));
    if dir.join(marker).exists() {
        return Some(dir);
    }
    let reason = format!("{what} in {} (run `cargo xtask setup`)", dir.display());
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{reason}");
    eprintln!("skipped: {reason}");
    None
}

/// The notifier binary under test: `NOTIFIER_BIN` (set by `cargo xtask test`) or the release build.
pub fn notifier_bin() -> PathBuf {
    std::env::var_os("NOTIFIER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/notifier"))
}

/// Runs a command and returns its stdout, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mounts tracefs on /sys/kernel/tracing unless it is there already (as systemd does at boot).
pub fn mount_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]));
    }
}

/// Events of one kind.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The value of the Prometheus sample `name{labels}` (written exactly as exposed) in `text`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn unused_port() -> u16 {
    free_port()
}
