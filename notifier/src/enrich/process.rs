//! Process ancestry: who invoked sudo or su. Read from /proc while the PAM caller is alive, and
//! user names from /etc/passwd directly (never through NSS, which may reach the network).

use std::fs;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub user: Option<String>,
}

/// Most ancestors reported.
const MAX_DEPTH: usize = 8;

/// The chain of parents starting at `ppid`, up to (not including) pid 1.
pub fn ancestry(ppid: u32) -> Vec<Ancestor> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut chain = Vec::new();
    let mut pid = ppid;
    while pid > 1 && chain.len() < MAX_DEPTH {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { break };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let comm = field("Name:").unwrap_or_default().to_string();
        let uid: u32 =
            field("Uid:").and_then(|u| u.split_whitespace().next()).and_then(|u| u.parse().ok()).unwrap_or(u32::MAX);
        let parent: u32 = field("PPid:").and_then(|p| p.parse().ok()).unwrap_or(0);
        chain.push(Ancestor { pid, comm, uid, user: user_name(&passwd, uid) });
        pid = parent;
    }
    chain
}

/// The name of `uid` in /etc/passwd text.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(passwd, 7), None);
    }

    #[test]
    fn own_ancestry_starts_at_parent() {
        let me = std::process::id();
        let chain = ancestry(me);
        assert_eq!(chain.first().map(|a| a.pid), Some(me));
        assert!(chain.len() <= MAX_DEPTH);
    }
}
