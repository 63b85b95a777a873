//! The sshd witness's part of the ABI: what the kernel keeps about sshd's listeners and the
//! processes of its connections, and how sshd records pack a process's place in its connection.

use core::mem::size_of;

/// An sshd listener's latest `accept()`: when, and the user buffer that receives the peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SshdAccepted {
    pub ts_ns: u64,
    pub buffer: u64,
}
const _: () = assert!(size_of::<SshdAccepted>() == 16);

/// What the kernel remembers about a process of a tracked sshd connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SshdConn {
    /// `CLOCK_BOOTTIME` of the `accept()`: with `owner_tgid`, identifies the connection.
    pub conn_ns: u64,
    /// The connection's own process (depth 1).
    pub owner_tgid: u32,
    /// 1 for the connection's process, 2 for its children.
    pub depth: u16,
    /// [`sshd_flags`].
    pub flags: u16,
}
const _: () = assert!(size_of::<SshdConn>() == 16);

/// Flags in [`SshdConn::flags`].
pub mod sshd_flags {
    /// The first child of the connection's process: sshd's pre-auth child (`sshd-auth` in 10.0).
    pub const FIRST_CHILD: u16 = 1;
    /// The connection's process has forked at least once (so later children are not the first).
    pub const FORKED: u16 = 2;
    /// This process called `setlogin`.
    pub const LOGGED_IN: u16 = 4;
}

/// Packing of depth and flags into [`crate::EventHeader::item`] for sshd records.
pub mod sshd_item {
    #[inline(always)]
    pub const fn pack(depth: u16, flags: u16) -> u32 {
        depth as u32 | (flags as u32) << 16
    }
    #[inline(always)]
    pub const fn depth(item: u32) -> u16 {
        item as u16
    }
    #[inline(always)]
    pub const fn flags(item: u32) -> u16 {
        (item >> 16) as u16
    }
}
