//! `SSH_AUTH_INFO_0` and `SSH_CONNECTION` values, and rhosts: whatever a PAM caller put there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = notifier::authinfo::parse(text);
    let _ = notifier::peer::parse_ssh_connection(text);
    let _ = notifier::peer::parse_ip(text);
});
