//! Kernel records: any bytes from the ring buffer decode to a record or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = notifier::source::decode(data);
});
