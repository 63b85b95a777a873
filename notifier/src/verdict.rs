//! The verdict vocabulary: what notifier concluded about a login. A leaf: it imports no other
//! module of the crate, so that config, policy, state and alert can all name verdicts.

use serde::{Deserialize, Serialize};

/// What notifier concluded about a login (or an attack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The peer is in an allowlisted network.
    Allowlisted,
    /// This user has logged in from this IP before.
    Known,
    /// A new IP, on a network this user has used before.
    NewIp,
    /// A new /24 (IPv4) or /64 (IPv6) network for this user.
    NewNetwork,
    /// A new autonomous system for this user (needs an ASN database).
    NewAsn,
    /// A new country for this user (needs a country database).
    NewCountry,
    /// The first login seen for this user.
    FirstLogin,
    /// No remote peer, a person at the machine: a console login, or su, sudo or runuser that was
    /// not run inside an SSH login.
    Local,
    /// No remote peer, a session the machine opens for itself: cron, atd, systemd-user, and any
    /// other session without a terminal.
    Machine,
    /// su, sudo or runuser inside an SSH login whose source is known.
    PrivilegeChange,
    /// su, sudo or runuser inside an SSH login whose source was not known when it logged in.
    PrivilegeChangeNewSource,
    /// Started by an untrusted process: the values may be forged.
    Forged,
    /// Repeated authentication failures from one IP.
    BruteForce,
    /// sshd logged a user in, but PAM, which that sshd uses, opened no session for the login: a
    /// tampered PAM stack or sshd.
    PamBypassed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowlisted => "allowlisted",
            Self::Known => "known",
            Self::NewIp => "new_ip",
            Self::NewNetwork => "new_network",
            Self::NewAsn => "new_asn",
            Self::NewCountry => "new_country",
            Self::FirstLogin => "first_login",
            Self::Local => "local",
            Self::Machine => "machine",
            Self::PrivilegeChange => "privilege_change",
            Self::PrivilegeChangeNewSource => "privilege_change_new_source",
            Self::Forged => "forged",
            Self::BruteForce => "brute_force",
            Self::PamBypassed => "pam_bypassed",
        }
    }
}
