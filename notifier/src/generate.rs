//! What the hidden `notifier generate` writes for packaging, from the clap definitions: the
//! shell completion scripts, and the man pages, notifier(1) and one page per subcommand
//! (notifier-watch(1), notifier-known-list(1), …), as `git` and `cargo` have. clap_mangen renders
//! the synopsis, options and subcommands; the sections it cannot know (FILES, SIGNALS,
//! ENVIRONMENT, EXIT STATUS, SEE ALSO) are written here, once, in roff.

use std::{io::Write, path::Path};

use clap::CommandFactory as _;
use clap_mangen::Man;

use crate::cli::{Cli, Generated};

/// Writes the man page or a completion script, generated from these very definitions.
pub fn generate(what: Generated, out: &mut impl std::io::Write) -> std::io::Result<()> {
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let shell = match what {
        Generated::Man => return main_page(out),
        Generated::Bash => Shell::Bash,
        Generated::Zsh => Shell::Zsh,
        Generated::Fish => Shell::Fish,
        Generated::Elvish => Shell::Elvish,
        Generated::Powershell => Shell::PowerShell,
    };
    // clap_complete panics when a write fails; render first, so that a closed pipe is an error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "notifier", &mut script);
    out.write_all(&script)
}

/// FILES, on notifier(1).
const FILES: &str = r#".SH FILES
.TP
.I /etc/notifier/notifier.toml
The config. The packaged file has every default commented out; \fBnotifier check\-config\fR prints
the effective settings and the file that set each.
.TP
.I /etc/notifier/notifier.d/*.toml
Drop\-ins, merged after it in name order: tables key by key, a \fB[[sink]]\fR by its name.
.TP
.I /etc/notifier/credentials/
Secrets, passed to the service with \fBLoadCredential=\fR and read as
\fB${CREDENTIALS_DIRECTORY}/notifier_\fR\fIFILE\fR.
.TP
.I /var/lib/notifier/history.json
The learned history and the command\-line allowlist (\fBnotifier known\fR).
.TP
.I /var/lib/notifier/spool/SINK/
One file per alert waiting for delivery to that sink.
.TP
.I /var/lib/notifier/dead\-letter.jsonl
Alerts given up on, with the reason (\fBnotifier spool list\fR, \fBnotifier spool retry\fR).
.TP
.I /var/lib/notifier/status.json
What the running daemon reports about itself (\fBnotifier status\fR).
.TP
.I /var/lib/notifier/fleet/
Fleet mode: the outbox of events not yet acknowledged, and the mirror of the shared history.
.TP
.I /usr/share/notifier/event.schema.json
The JSON Schema of every JSON event and webhook body (\fB"schema":1\fR).
.TP
.I /usr/lib/systemd/system/notifier.service
The hardened unit (\fBType=notify\fR).
"#;

/// SIGNALS, on notifier(1) and notifier-run(1).
const SIGNALS: &str = r#".SH SIGNALS
.TP
.B SIGTERM, SIGINT
Stop: write what is already in the ring buffer, detach the probes, give pending alerts 5 seconds,
and keep the rest in the spool for the next start.
.TP
.B SIGHUP
\fBrun\fR: read the config and its drop\-ins again. A config that does not validate is refused and
the running one kept. The probes stay attached, so no login is missed. (\fBwatch\fR ends, as on a
closed terminal.)
.TP
.B SIGUSR1
\fBrun\fR: take up dead letters put back by \fBnotifier spool retry\fR, and try every pending alert
now instead of waiting out its backoff.
"#;

/// ENVIRONMENT, on notifier(1).
const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter on standard error, as \fBinfo\fR (the default), \fBdebug\fR, or \fBnotifier=debug\fR.
.TP
.B NOTIFIER_UPROBE_MULTI
\fB0\fR attaches perf\-event uprobes instead of uprobe_multi links, as on kernels before 6.6.
They need CAP_SYS_ADMIN and detach more slowly.
.TP
.B CREDENTIALS_DIRECTORY
Set by systemd's \fBLoadCredential=\fR; a secret's \fBfile\fR may name it as
\fB${CREDENTIALS_DIRECTORY}\fR. Any \fB${VAR}\fR in an inline secret is read from the environment.
.TP
.B NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
Set by systemd: READY, STATUS, RELOADING, STOPPING and watchdog messages go there.
.TP
.B JOURNAL_STREAM
Set by systemd: logs are plain lines with the journal's priority prefix, without time or colour.
"#;

/// EXIT STATUS, on every page.
const EXIT_STATUS: &str = r#".SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
Any other error (\fBtest\-alert\fR: a sink failed), named on standard error.
.TP
.B 3
\fBstatus\fR: the daemon is not running.
.TP
.B 69
The system lacks what notifier needs: uprobes, or libpam (EX_UNAVAILABLE).
.TP
.B 77
Missing privileges: run as root, or with CAP_BPF and CAP_PERFMON (EX_NOPERM).
.TP
.B 78
A config error, naming the file, the key and the fix (EX_CONFIG). The unit does not restart on 77
or 78.
"#;

/// Every page's name, for SEE ALSO: `notifier`, `notifier-watch`, `notifier-known-list`, ….
fn names(cmd: &clap::Command, out: &mut Vec<String>) {
    out.push(cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_string());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        names(sub, out);
    }
}

fn see_also(all: &[String], this: &str) -> String {
    let mut refs: Vec<String> =
        all.iter().filter(|n| *n != this).map(|n| format!("\\fB{}\\fR(1)", n.replace('-', "\\-"))).collect();
    refs.extend(["\\fBsystemctl\\fR(1)", "\\fBjournalctl\\fR(1)", "\\fBpam\\fR(8)"].map(String::from));
    format!(".SH SEE ALSO\n{}\n", refs.join(",\n"))
}

/// Writes one page: clap's sections, then ours.
fn render(cmd: clap::Command, all: &[String], out: &mut dyn Write) -> std::io::Result<()> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_string();
    Man::new(cmd).render(out)?;
    let top = name == "notifier";
    if top {
        out.write_all(FILES.as_bytes())?;
    }
    if top || name == "notifier-run" {
        out.write_all(SIGNALS.as_bytes())?;
    }
    if top {
        out.write_all(ENVIRONMENT.as_bytes())?;
    }
    out.write_all(EXIT_STATUS.as_bytes())?;
    out.write_all(see_also(all, &name).as_bytes())
}

/// The built command tree (display names set: `notifier-known-list`), without `help`.
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// notifier(1) alone.
pub fn main_page(out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = command();
    let mut all = Vec::new();
    names(&cmd, &mut all);
    render(cmd, &all, out)
}

/// Every page into `dir` (`notifier.1`, `notifier-watch.1`, …); returns their file names.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<String>> {
    let cmd = command();
    let mut all = Vec::new();
    names(&cmd, &mut all);
    let mut written = Vec::new();
    let mut stack = vec![cmd];
    while let Some(cmd) = stack.pop() {
        stack.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let file = format!("{}.1", cmd.get_display_name().unwrap_or_else(|| cmd.get_name()));
        let mut f = std::fs::File::create(dir.join(&file))?;
        render(cmd, &all, &mut f)?;
        written.push(file);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_each_subcommand_and_every_reference_has_its_page() {
        let dir = std::env::temp_dir().join(format!("notifier-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pages = write_all(&dir).unwrap();
        for want in
            ["notifier.1", "notifier-watch.1", "notifier-status.1", "notifier-spool-retry.1", "notifier-known-list.1"]
        {
            assert!(pages.iter().any(|p| p == want), "{want} in {pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("generate") || p.contains("help")), "{pages:?}");
        let main = std::fs::read_to_string(dir.join("notifier.1")).unwrap();
        for section in ["FILES", "SIGNALS", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"] {
            assert!(main.contains(&format!(".SH {section}")), "{section}");
        }
        assert!(main.contains("NOTIFIER_UPROBE_MULTI") && main.contains("SIGUSR1"));
        // Every notifier-*(1) that any page names is a page that exists.
        let mut checked = 0;
        for page in &pages {
            let text = std::fs::read_to_string(dir.join(page)).unwrap().replace("\\-", "-");
            assert!(text.contains(".SH EXIT STATUS"), "{page}");
            let named = text.matches("notifier-").count();
            assert!(named >= pages.len() - 1, "{page} names the other pages ({named})");
            for (i, _) in text.match_indices("notifier-") {
                let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                let after = &text[i + name.len()..];
                if after.starts_with("(1)") || after.starts_with("\\fR(1)") {
                    assert!(pages.contains(&format!("{name}.1")), "{page} names {name}(1), which has no page");
                    checked += 1;
                }
            }
        }
        assert!(checked > pages.len() * 10, "{checked} references");
        let mut one = Vec::new();
        main_page(&mut one).unwrap();
        assert_eq!(String::from_utf8(one).unwrap(), main);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_closed_pipe_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for what in [Generated::Bash, Generated::Zsh, Generated::Fish, Generated::Man] {
            assert_eq!(generate(what, &mut Closed).unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
        }
    }
}
