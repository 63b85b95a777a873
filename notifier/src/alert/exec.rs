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
