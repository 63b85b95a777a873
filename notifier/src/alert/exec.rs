//! The exec sink: runs a program with an argument vector, never through a shell. The alert's JSON
//! arrives on stdin, and pam_exec-style variables (`PAM_USER`, `PAM_RHOST`, `PAM_SERVICE`,
//! `PAM_TTY`, `PAM_TYPE`) in a clean environment, so existing pam_exec scripts keep working. For a
//! forged event (verdict `forged`) those variables are left out and `NOTIFIER_FORGED=1` is set.

use std::{process::Stdio, time::Duration};

use tokio::io::AsyncWriteExt as _;

use super::{sink::SinkError, Alert};
use crate::verdict::Verdict;

pub struct ExecSink {
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl ExecSink {
    pub async fn send(&self, alert: &Alert) -> Result<(), SinkError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(SinkError::permanent("empty command"));
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        // A forged event's values were chosen by whoever forged it: they are not presented as
        // PAM's (a pam_exec script would trust them); they stay in the JSON on stdin.
        if alert.verdict == Some(Verdict::Forged) {
            cmd.env("NOTIFIER_FORGED", "1");
        } else {
            cmd.env("PAM_USER", opt(&alert.user))
                .env("PAM_RHOST", alert.ip.map(|i| i.to_string()).unwrap_or_default())
                .env("PAM_SERVICE", opt(&alert.service))
                .env("PAM_TTY", opt(&alert.tty))
                .env("PAM_TYPE", opt(&alert.pam_type));
        }
        // SAFETY: `drop_capabilities` makes only async-signal-safe system calls (prctl, capset).
        unsafe { cmd.pre_exec(drop_capabilities) };
        let mut child = cmd
            .env("NOTIFIER_ALERT_ID", &alert.id)
            .env("NOTIFIER_HOST", &alert.host)
            .env("NOTIFIER_VERDICT", alert.verdict.map(|v| v.as_str()).unwrap_or_default())
            .env("NOTIFIER_REASON", &alert.reason)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    SinkError::permanent(format!("cannot run {program}: {e}"))
                }
                _ => SinkError::transient(format!("cannot run {program}: {e}")),
            })?;
        let json = serde_json::to_vec(alert).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read its stdin is fine.
            let _ = stdin.write_all(&json).await;
        }
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => Err(SinkError::transient(format!("{program} did not finish within {:?}; killed", self.timeout))),
            Ok(Err(e)) => Err(SinkError::transient(format!("waiting for {program}: {e}"))),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let stderr: String = String::from_utf8_lossy(&out.stderr).chars().take(200).collect();
                Err(SinkError::transient(format!("{program} exited with {}: {}", out.status, stderr.trim())))
            }
        }
    }
}

/// In the child, before exec: the program runs with no capability, whatever notifier holds
/// (CAP_SYS_ADMIN and CAP_SYS_PTRACE under the unit). The ambient set is cleared and the bounding
/// set emptied, then the permitted, effective and inheritable sets. Emptying the bounding set needs
/// CAP_SETPCAP, which the unit does not grant; there the unit's NoNewPrivileges= keeps exec from
/// giving a root program the bounding set back, and it is set here too whenever the bounding set
/// could not be emptied. (A program that needs to switch users, through sudo, say, then cannot.)
fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl and capset with these arguments only change this process's credentials.
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        let mut bounding_emptied = true;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1
                && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            {
                bounding_emptied = false;
            }
        }
        if !bounding_emptied && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{internal_alert, AlertKind};

    /// Runs the sink with a script that saves its environment; returns it.
    async fn env_of(alert: &Alert) -> String {
        let out = std::env::temp_dir().join(format!("notifier-exec-env-{}-{}", std::process::id(), alert.id));
        let sink = ExecSink {
            command: vec!["/bin/sh".into(), "-c".into(), "env > \"$0\"".into(), out.display().to_string()],
            timeout: Duration::from_secs(10),
        };
        sink.send(alert).await.expect("the script ran");
        let env = std::fs::read_to_string(&out).expect("env file");
        std::fs::remove_file(&out).expect("cleanup");
        env
    }

    #[tokio::test]
    async fn a_forged_events_values_are_not_passed_as_pams() {
        let mut a = internal_alert(AlertKind::Login, "web-1", "r".into());
        (a.id, a.user, a.ip, a.service) =
            ("real".into(), Some("alice".into()), "203.0.113.7".parse().ok(), Some("sshd".into()));
        a.verdict = Some(Verdict::NewIp);
        let env = env_of(&a).await;
        assert!(env.contains("PAM_USER=alice\n") && env.contains("PAM_RHOST=203.0.113.7\n"), "{env}");
        assert!(!env.contains("NOTIFIER_FORGED"), "{env}");
        (a.id, a.verdict) = ("forged".into(), Some(Verdict::Forged));
        let env = env_of(&a).await;
        assert!(!env.contains("PAM_"), "{env}");
        assert!(env.contains("NOTIFIER_FORGED=1\n") && env.contains("NOTIFIER_VERDICT=forged\n"), "{env}");
    }
}
