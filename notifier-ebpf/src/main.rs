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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
