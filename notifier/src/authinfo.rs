//! The authentication method and public key of an SSH login, from OpenSSH's `SSH_AUTH_INFO_0`.
//!
//! sshd sets it to one line per method used (`publickey ssh-ed25519 AAAA…`, `password`,
//! `keyboard-interactive`, …). For public keys the fingerprint is computed the way `ssh-keygen -l`
//! does: SHA-256 over the decoded key blob, base64 without padding, prefixed with `SHA256:`.

use base64::{engine::general_purpose::STANDARD, engine::general_purpose::STANDARD_NO_PAD, Engine as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// What `SSH_AUTH_INFO_0` says about how the user authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthInfo {
    /// The methods used, joined with `+` in order (e.g. `publickey+password`).
    pub method: Option<String>,
    /// The public key's type, for `publickey`.
    pub key_type: Option<String>,
    /// `SHA256:<base64>`, identical to `ssh-keygen -lf` on the key.
    pub fingerprint: Option<String>,
}

/// Parses the value of `SSH_AUTH_INFO_0` (without the `NAME=`). Returns `None` when it is empty,
/// as sshd sets it before authentication completes.
pub fn parse(value: &str) -> Option<AuthInfo> {
    let mut info = AuthInfo::default();
    let mut methods: Vec<&str> = Vec::new();
    for line in value.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(method) = words.next() else { continue };
        methods.push(method);
        if method == "publickey" && info.fingerprint.is_none() {
            info.key_type = words.next().map(str::to_owned);
            info.fingerprint = words.next().and_then(fingerprint);
        }
    }
    if methods.is_empty() {
        return None;
    }
    info.method = Some(methods.join("+"));
    Some(info)
}

/// `SHA256:` fingerprint of a base64-encoded key blob, or `None` if it is not valid base64.
pub fn fingerprint(blob_base64: &str) -> Option<String> {
    let blob = STANDARD.decode(blob_base64).ok()?;
    Some(format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob))))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway key made for this test with `ssh-keygen -t ed25519`; `ssh-keygen -lf` printed
    // "256 SHA256:tvzOpJ5+OEOfM34D3N8EBlLKlxLUMO5wvKhcAWp9IJg t (ED25519)".
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHuhnLJO61erJHOjlaB/DfH7RjRgiT+tN1eBqUd48vwW";
    const FINGERPRINT: &str = "SHA256:tvzOpJ5+OEOfM34D3N8EBlLKlxLUMO5wvKhcAWp9IJg";

    #[test]
    fn publickey_line() {
        let info = parse(&format!("publickey ssh-ed25519 {KEY}\n")).unwrap();
        assert_eq!(info.method.as_deref(), Some("publickey"));
        assert_eq!(info.key_type.as_deref(), Some("ssh-ed25519"));
        assert_eq!(info.fingerprint.as_deref(), Some(FINGERPRINT));
    }

    #[test]
    fn several_methods_and_empty() {
        let info = parse(&format!("publickey ssh-ed25519 {KEY}\npassword\n")).unwrap();
        assert_eq!(info.method.as_deref(), Some("publickey+password"));
        assert_eq!(parse(""), None);
        assert_eq!(parse("\n"), None);
        let info = parse("keyboard-interactive\n").unwrap();
        assert_eq!((info.method.as_deref(), info.fingerprint), (Some("keyboard-interactive"), None));
    }

    #[test]
    fn bad_base64_gives_no_fingerprint() {
        let info = parse("publickey ssh-rsa not*base64").unwrap();
        assert_eq!(info.key_type.as_deref(), Some("ssh-rsa"));
        assert_eq!(info.fingerprint, None);
    }
}
