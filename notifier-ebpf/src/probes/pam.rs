//! Probes on libpam's public API. Each reads only the arguments of the call it hooks:
//! - `pam_start`/`pam_start_confdir`: service and user at entry, the new handle at return;
//! - `pam_set_item`: the value, only for the items in `notifier_common::item`;
//! - `pam_putenv`: only `SSH_CONNECTION=` and `SSH_AUTH_INFO_0=` (16 bytes are read to decide);
//! - `pam_authenticate`, `pam_open_session`, `pam_close_session`: the result at return;
//! - `pam_end`: the final status, and the handle's state is dropped.
//!
//! Never read: `PAM_AUTHTOK`, `PAM_OLDAUTHTOK`, `pam_get_authtok`, the conversation, libpam's
//! private `struct pam_handle`.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use notifier_common::{env, func, item, kind, lost, HandleKey, HandleState, Inflight};

use crate::record::{count_lost, current_lane, handles, save_inflight, take_inflight, tgid, Record, SSHD_ORIGIN};

/// Argument `n` as a raw 64-bit value (pointer or integer), 0 if it cannot be read.
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

// int pam_start(const char *service, const char *user, const struct pam_conv *conv,
//               pam_handle_t **pamh);
#[uprobe]
pub fn pam_enter_start(ctx: ProbeContext) -> u32 {
    save_inflight(func::START, Inflight { a: arg(&ctx, 0), b: arg(&ctx, 1), c: arg(&ctx, 3) });
    0
}

// int pam_start_confdir(const char *service, const char *user, const struct pam_conv *conv,
//                       const char *confdir, pam_handle_t **pamh);
#[uprobe]
pub fn pam_enter_start_confdir(ctx: ProbeContext) -> u32 {
    save_inflight(func::START, Inflight { a: arg(&ctx, 0), b: arg(&ctx, 1), c: arg(&ctx, 4) });
    0
}

/// Return of either `pam_start` flavour: registers the handle and reports service and user.
#[uretprobe]
pub fn pam_exit_start(ctx: RetProbeContext) -> u32 {
    let Some(args) = take_inflight(func::START) else {
        return 0;
    };
    let ret: i32 = ctx.ret();
    if ret != 0 || args.c == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user fails instead of faulting.
    let Ok(handle) = (unsafe { bpf_probe_read_user(args.c as *const u64) }) else {
        count_lost(current_lane(), lost::READ_FAILED);
        return 0;
    };
    if handle == 0 {
        return 0;
    }
    let Some(mut rec) = Record::new(kind::START, 0) else {
        return 0;
    };
    let owner = tgid();
    let start_ns = {
        let h = rec.header();
        h.handle = handle;
        h.owner_tgid = owner;
        h.session_start_ns = h.ts_ns;
        // SAFETY: the value is copied out at once.
        if let Some(origin) = unsafe { SSHD_ORIGIN.get(owner) } {
            h.origin_ns = origin.conn_ns;
            h.origin_tgid = origin.owner_tgid;
        }
        h.ts_ns
    };
    let key = HandleKey { tgid: owner, _pad: 0, handle };
    let state = HandleState { start_ns, owner_tgid: owner, _pad: 0 };
    if handles(rec.lane()).insert(key, state, 0).is_err() {
        count_lost(rec.lane(), lost::HANDLES_FULL);
    }
    rec.read_user_str(args.a);
    rec.emit();

    if args.b != 0 {
        if let Some(mut rec) = Record::new(kind::START_USER, handle) {
            rec.read_user_str(args.b);
            rec.emit();
        }
    }
    0
}

// int pam_set_item(pam_handle_t *pamh, int item_type, const void *item);
#[uprobe]
pub fn pam_enter_set_item(ctx: ProbeContext) -> u32 {
    let item_type = arg(&ctx, 1) as u32;
    if !item::is_captured(item_type) {
        return 0;
    }
    if let Some(mut rec) = Record::new(kind::SET_ITEM, arg(&ctx, 0)) {
        rec.header().item = item_type;
        rec.read_user_str(arg(&ctx, 2));
        rec.emit();
    }
    0
}

// int pam_putenv(pam_handle_t *pamh, const char *name_value);
#[uprobe]
pub fn pam_enter_putenv(ctx: ProbeContext) -> u32 {
    let src = arg(&ctx, 1);
    if src == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user fails instead of faulting. Only the prefix is read here; the
    // rest of the string is copied only when the name is one of the captured ones.
    let Ok(prefix) = (unsafe { bpf_probe_read_user(src as *const [u8; env::PREFIX_LEN]) }) else {
        return 0;
    };
    if !starts_with(&prefix, env::SSH_CONNECTION) && !starts_with(&prefix, env::SSH_AUTH_INFO_0) {
        return 0;
    }
    if let Some(mut rec) = Record::new(kind::PUTENV, arg(&ctx, 0)) {
        rec.read_user_str(src);
        rec.emit();
    }
    0
}

#[inline(always)]
fn starts_with(prefix: &[u8; env::PREFIX_LEN], name: &[u8]) -> bool {
    if name.len() > env::PREFIX_LEN {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        if prefix[i] != name[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Saves the handle at the entry of a function whose result is reported at return.
#[inline(always)]
fn enter_with_handle(ctx: &ProbeContext, func: u32) -> u32 {
    save_inflight(func, Inflight { a: arg(ctx, 0), b: 0, c: 0 });
    0
}

/// Reports the result of `func` with the handle saved at its entry.
#[inline(always)]
fn exit_with_result(ctx: &RetProbeContext, func: u32, kind: u32) -> u32 {
    let Some(args) = take_inflight(func) else {
        return 0;
    };
    if let Some(mut rec) = Record::new(kind, args.a) {
        rec.header().ret = ctx.ret();
        rec.emit();
    }
    0
}

#[uprobe]
pub fn pam_enter_authenticate(ctx: ProbeContext) -> u32 {
    enter_with_handle(&ctx, func::AUTHENTICATE)
}

#[uretprobe]
pub fn pam_exit_authenticate(ctx: RetProbeContext) -> u32 {
    exit_with_result(&ctx, func::AUTHENTICATE, kind::AUTHENTICATE)
}

#[uprobe]
pub fn pam_enter_open_session(ctx: ProbeContext) -> u32 {
    enter_with_handle(&ctx, func::OPEN_SESSION)
}

#[uretprobe]
pub fn pam_exit_open_session(ctx: RetProbeContext) -> u32 {
    exit_with_result(&ctx, func::OPEN_SESSION, kind::OPEN_SESSION)
}

#[uprobe]
pub fn pam_enter_close_session(ctx: ProbeContext) -> u32 {
    enter_with_handle(&ctx, func::CLOSE_SESSION)
}

#[uretprobe]
pub fn pam_exit_close_session(ctx: RetProbeContext) -> u32 {
    exit_with_result(&ctx, func::CLOSE_SESSION, kind::CLOSE_SESSION)
}

// int pam_end(pam_handle_t *pamh, int pam_status);
#[uprobe]
pub fn pam_enter_end(ctx: ProbeContext) -> u32 {
    let handle = arg(&ctx, 0);
    let Some(mut rec) = Record::new(kind::END, handle) else {
        return 0;
    };
    let lane = rec.lane();
    let owner = {
        let h = rec.header();
        h.item = arg(&ctx, 1) as u32;
        h.owner_tgid
    };
    rec.emit();
    // Only the process that started the handle frees its state; a forked child ending its copy
    // leaves the parent's session alone.
    let me = tgid();
    if owner == me {
        let _ = handles(lane).remove(HandleKey { tgid: me, _pad: 0, handle });
    }
    0
}
