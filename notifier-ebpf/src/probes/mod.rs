//! Probe families: `pam` covers libpam's public API, `sshd` the sshd witness, `containers` the
//! mount namespaces that appear after start.
pub mod containers;
pub mod pam;
pub mod sshd;
