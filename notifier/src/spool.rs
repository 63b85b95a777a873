//! `notifier spool list|retry`: the alerts waiting in each sink's spool, the dead letters, and
//! sending dead letters again. A retried dead letter is written to its sink's spool first and
//! taken out of `dead-letter.jsonl` second (a crash between the two repeats it, never loses it);
//! the running daemon is then told to look (SIGUSR1). The dead-letter file is rewritten under the
//! lock the daemon appends under, so neither side loses the other's lines.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    path::Path,
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::{
    alert::spool::{now_ms, same_file, DeadLetter, Entry, Spool},
    cli::{SpoolArgs, SpoolCommand},
    config::Config,
    event::printable,
    state::{spool as layout, status},
};

/// The dead letters, oldest first, and how many lines could not be read.
pub fn dead_letters(state_dir: &Path) -> io::Result<(Vec<DeadLetter>, usize)> {
    let text = match fs::read_to_string(layout::dead_letter(state_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut bad = 0;
    let letters = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).inspect_err(|_| bad += 1).ok())
        .collect();
    Ok((letters, bad))
}

/// Every pending entry of every sink's spool directory, by directory name.
fn pending(state_dir: &Path) -> Vec<(String, Entry)> {
    let mut all = Vec::new();
    for (name, dir) in layout::sink_dirs(state_dir) {
        for file in layout::entry_files(&dir) {
            if let Some(entry) = fs::read(file).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) {
                all.push((name.clone(), entry));
            }
        }
    }
    all.sort_by_key(|(_, e)| e.spooled_ms);
    all
}

/// A state directory that cannot be read is most often a user who is not root.
pub fn unreadable(what: &Path, e: &io::Error) -> anyhow::Error {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied { "; run this as root" } else { "" };
    anyhow::anyhow!("cannot read {}: {e}{hint}", what.display())
}

pub fn run(args: SpoolArgs) -> anyhow::Result<()> {
    let config = Config::load_or_default(args.config.as_deref())?;
    let state_dir = &config.state_dir;
    if let Err(e) = fs::read_dir(state_dir) {
        return Err(unreadable(state_dir, &e));
    }
    match args.command {
        SpoolCommand::List { json } => {
            let pending = pending(state_dir);
            let (dead, bad) = dead_letters(state_dir).map_err(|e| unreadable(&layout::dead_letter(state_dir), &e))?;
            let mut out = io::stdout().lock();
            if json {
                #[derive(Serialize)]
                struct Pending<'a> {
                    spool: &'a str,
                    #[serde(flatten)]
                    entry: &'a Entry,
                }
                let pending: Vec<Pending> = pending.iter().map(|(spool, entry)| Pending { spool, entry }).collect();
                let body = serde_json::json!({ "pending": pending, "dead_letters": dead, "unreadable_lines": bad });
                serde_json::to_writer_pretty(&mut out, &body)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", list_text(&pending, &dead, bad, now_ms()))?;
            }
            Ok(())
        }
        SpoolCommand::Retry { ids, all, sink } => retry(&config, &ids, all, sink.as_deref()),
    }
}

/// What an alert is about, on one line.
fn about(a: &crate::alert::Alert) -> String {
    let mut s = a.verdict.map_or_else(|| format!("{:?}", a.kind).to_lowercase(), |v| v.as_str().to_string());
    if let Some(user) = &a.user {
        let _ = write!(s, " {}", printable(user));
    }
    if let Some(ip) = a.ip {
        let _ = write!(s, " from {ip}");
    }
    if let Some(service) = &a.service {
        let _ = write!(s, " ({})", printable(service));
    }
    s
}

fn list_text(pending: &[(String, Entry)], dead: &[DeadLetter], bad: usize, now: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Pending alerts: {}", pending.len());
    for (spool, e) in pending {
        let wait = (e.next_ms - now).max(0) / 1000;
        let _ = writeln!(
            out,
            "  {}  {spool}  {}  {}, {} attempt{}, next in {wait} s",
            e.alert.id,
            e.alert.time,
            about(&e.alert),
            e.attempts,
            if e.attempts == 1 { "" } else { "s" },
        );
        if let Some(error) = &e.last_error {
            let _ = writeln!(out, "      last error: {}", printable(error));
        }
    }
    let _ = writeln!(out, "Dead letters: {}", dead.len());
    for d in dead {
        let _ = writeln!(
            out,
            "  {}  {}  {}  {}, given up {}",
            d.alert.id,
            printable(&d.sink),
            d.alert.time,
            about(&d.alert),
            d.time
        );
        let _ = writeln!(out, "      reason: {}", printable(&d.reason));
    }
    if bad > 0 {
        let _ = writeln!(out, "({bad} unreadable line(s) in the dead-letter file)");
    }
    if !dead.is_empty() {
        out.push_str("Send dead letters again with `notifier spool retry ID...` or `notifier spool retry --all`.\n");
    }
    out
}

fn retry(config: &Config, ids: &[String], all: bool, sink: Option<&str>) -> anyhow::Result<()> {
    let state_dir = &config.state_dir;
    let path = layout::dead_letter(state_dir);
    if let Some(name) = sink.filter(|n| !config.sinks.iter().any(|s| s.name == *n)) {
        bail!("no sink called {name:?} in the config; see `notifier check-config`");
    }
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("there are no dead letters ({} does not exist)", path.display())
        }
        Err(e) => return Err(unreadable(&path, &e)),
    };
    // The daemon appends under this lock; it is held until the new file is in place.
    file.lock().context("locking the dead-letter file")?;
    let text = fs::read_to_string(&path).map_err(|e| unreadable(&path, &e))?;
    let chosen = |d: &DeadLetter| sink.is_none_or(|s| d.sink == s) && (all || ids.contains(&d.alert.id));
    let (mut keep, mut retried, mut gone) = (String::new(), Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<DeadLetter>(line) {
            Ok(d) if chosen(&d) && config.sinks.iter().any(|s| s.name == d.sink) => retried.push(d),
            Ok(d) if chosen(&d) => {
                gone.push(d.sink);
                keep.push_str(line);
                keep.push('\n');
            }
            _ => {
                keep.push_str(line);
                keep.push('\n');
            }
        }
    }
    for name in &gone {
        eprintln!("warning: sink {:?} is no longer in the config; its dead letters stay", printable(name));
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !retried.iter().any(|d| d.alert.id == **id)).collect();
    if retried.is_empty() {
        bail!(
            "no dead letter to send again{}; see `notifier spool list`",
            match missing.is_empty() {
                true => String::new(),
                false =>
                    format!(" (not found: {})", missing.iter().map(|s| printable(s)).collect::<Vec<_>>().join(", ")),
            }
        );
    }
    let now = now_ms();
    for d in &retried {
        let spool =
            Spool::open(state_dir, &d.sink).with_context(|| format!("opening the spool of sink {:?}", d.sink))?;
        let entry = Entry { alert: d.alert.clone(), attempts: 0, spooled_ms: now, next_ms: now, last_error: None };
        spool.put(&entry).with_context(|| format!("writing alert {} to the spool of sink {:?}", d.alert.id, d.sink))?;
    }
    if !same_file(&file, &path) {
        bail!("{} changed while it was read; try again", path.display());
    }
    crate::state::write_durably(&path, &path.with_extension("jsonl.tmp"), keep.as_bytes())
        .with_context(|| format!("rewriting {}", path.display()))?;
    drop(file);
    for id in &missing {
        eprintln!("warning: no dead letter {}", printable(id));
    }
    let n = retried.len();
    let what = format!("{n} dead letter{} put back in the spool", if n == 1 { "" } else { "s" });
    match status::read(state_dir).ok().flatten().filter(status::Status::running) {
        Some(s) => {
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            if unsafe { libc::kill(s.pid as libc::pid_t, libc::SIGUSR1) } != 0 {
                let e = io::Error::last_os_error();
                bail!(
                    "{what}, but notifier (pid {}) could not be told: {e}; run `systemctl kill -s USR1 notifier`",
                    s.pid
                );
            }
            println!("{what}; notifier (pid {}) is delivering {} now.", s.pid, if n == 1 { "it" } else { "them" });
        }
        None => println!(
            "{what}; notifier is not running, and delivers {} when it starts.",
            if n == 1 { "it" } else { "them" }
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{internal_alert, AlertKind};

    #[test]
    fn the_list_names_each_alert_its_wait_and_its_error_escaped() {
        let mut alert = internal_alert(AlertKind::Health, "h", "x".into());
        alert.id = "a1".into();
        alert.time = "2026-12-06T06:00:00Z".into();
        alert.user = Some("eve\u{1b}[2J".into());
        let entry = Entry {
            alert: alert.clone(),
            attempts: 2,
            spooled_ms: 0,
            next_ms: 45_500,
            last_error: Some("HTTP 500\n".into()),
        };
        let dead = DeadLetter {
            time: "2026-12-06T07:00:00Z".into(),
            sink: "ops".into(),
            reason: "HTTP 400: bad".into(),
            attempts: 1,
            alert,
        };
        let text = list_text(&[("ops".into(), entry)], &[dead], 1, 500);
        assert_eq!(
            text,
            "Pending alerts: 1\n  a1  ops  2026-12-06T06:00:00Z  health eve\\u{1b}[2J, 2 attempts, next in 45 s\n      \
             last error: HTTP 500\\u{a}\nDead letters: 1\n  a1  ops  2026-12-06T06:00:00Z  health eve\\u{1b}[2J, given \
             up 2026-12-06T07:00:00Z\n      reason: HTTP 400: bad\n(1 unreadable line(s) in the dead-letter \
             file)\nSend dead letters again with `notifier spool retry ID...` or `notifier spool retry --all`.\n"
        );
    }
}
