//! notifier's eBPF object. It owns the maps shared with userspace and the probe programs, one module
//! per family of probed functions. The probes only copy public-API arguments into ring buffer
//! records; assembling them into logins is userspace's job.
#![no_std]
#![no_main]

mod probes;
mod record;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The object's licence as the kernel reads it: "Dual MIT/GPL" is GPL-compatible, which the
/// helpers the probes use (probe reads, ring buffer output) require. The crate is MIT or GPL-2.0.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
