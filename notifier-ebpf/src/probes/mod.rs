//! Probe families: `pam` covers libpam's public API, `sshd` the sshd witness.
pub mod pam;
pub mod sshd;
