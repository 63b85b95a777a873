//! Event and session ids. A leaf: it imports no other module of the crate.

use sha2::{Digest as _, Sha256};

/// An event id: 16 hex digits of the SHA-256 of this boot's id and `parts`, so that ids are stable
/// within a session and unique across reboots.
pub fn short_id(boot_id: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(boot_id.as_bytes());
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_depend_on_boot_and_parts() {
        let a = super::short_id("boot-1", &[b"x", &1u32.to_le_bytes()]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, super::short_id("boot-1", &[b"x", &1u32.to_le_bytes()]));
        assert_ne!(a, super::short_id("boot-2", &[b"x", &1u32.to_le_bytes()]));
        assert_ne!(a, super::short_id("boot-1", &[b"x", &2u32.to_le_bytes()]));
    }
}
