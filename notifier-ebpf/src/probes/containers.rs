//! Containers started after notifier: the first program a root process executes in a mount
//! namespace not seen before is reported once, so that the loader can look in that process's root
//! for libpam and sshd and attach to them. `sched_process_exec` fires once per `execve`, not per
//! system call, and a namespace already seen costs one map lookup. Users' processes are not
//! followed: a namespace a user makes holds no file that notifier would trust.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use notifier_common::{kind, lane};

use crate::{
    record::{current_lane, Record, MOUNT_NS_SEEN},
    task::mount_ns,
};

#[tracepoint]
pub fn containers_sched_process_exec(_ctx: TracePointContext) -> u32 {
    if current_lane() != lane::ROOT {
        return 0;
    }
    let Some(ns) = mount_ns() else {
        return 0;
    };
    // SAFETY: the value is only tested for presence.
    if unsafe { MOUNT_NS_SEEN.get(ns) }.is_some() || MOUNT_NS_SEEN.insert(ns, 1, 0).is_err() {
        return 0;
    }
    if let Some(mut rec) = Record::in_lane(lane::ROOT, kind::NEW_MOUNT_NS, 0) {
        rec.header().item = ns;
        rec.emit();
    }
    0
}
