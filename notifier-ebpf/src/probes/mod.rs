//! Probe families. `pam` covers libpam's public API.
pub mod pam;
