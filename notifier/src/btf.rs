//! Finds, in the running kernel's BTF, the offsets of the few `task_struct`, `cred`, `mm_struct`,
//! `file` and `inode` fields the probes read to identify a caller (parent, effective uid, and the
//! inode, owner and mode of its executable) and an sshd process's exit status. aya has no CO-RE for Rust programs, so the loader resolves
//! them here and hands them to the object as a global.

use btf_rs::{Btf, BtfType, Struct, Type};
use notifier_common::TaskOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF at {VMLINUX_BTF}: {reason}")]
    Btf { reason: String },
    #[error("kernel BTF has no field {strukt}.{field}")]
    Missing { strukt: &'static str, field: &'static str },
}

/// Reads the offsets from the running kernel.
pub fn task_offsets() -> Result<TaskOffsets, OffsetError> {
    let btf = Btf::from_file(VMLINUX_BTF).map_err(|e| OffsetError::Btf { reason: format!("{e:#}") })?;
    let off = |strukt: &'static str, field: &'static str| -> Result<u32, OffsetError> {
        member_offset(&btf, strukt, field).ok_or(OffsetError::Missing { strukt, field })
    };
    Ok(TaskOffsets {
        valid: 1,
        task_real_parent: off("task_struct", "real_parent")?,
        task_tgid: off("task_struct", "tgid")?,
        task_cred: off("task_struct", "cred")?,
        task_mm: off("task_struct", "mm")?,
        cred_euid: off("cred", "euid")?,
        mm_exe_file: off("mm_struct", "exe_file")?,
        file_f_inode: off("file", "f_inode")?,
        inode_i_uid: off("inode", "i_uid")?,
        inode_i_mode: off("inode", "i_mode")?,
        inode_i_ino: off("inode", "i_ino")?,
        task_exit_code: off("task_struct", "exit_code")?,
    })
}

/// Byte offset of `field` in the struct named `strukt`, looking through anonymous members.
fn member_offset(btf: &Btf, strukt: &str, field: &str) -> Option<u32> {
    btf.resolve_types_by_name(strukt).ok()?.iter().find_map(|t| match t {
        Type::Struct(s) => find_member(btf, s, field),
        _ => None,
    })
}

fn find_member(btf: &Btf, s: &Struct, field: &str) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some(m.bit_offset() / 8);
        }
        if name.is_empty() {
            let inner = m.get_type_id().ok().and_then(|id| btf.resolve_type_by_id(id).ok());
            if let Some(Type::Struct(inner) | Type::Union(inner)) = inner {
                if let Some(off) = find_member(btf, &inner, field) {
                    return Some(m.bit_offset() / 8 + off);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_offsets_in_running_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            assert!(std::env::var_os("CI").is_none(), "CI machines have kernel BTF");
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let o = task_offsets().expect("offsets");
        assert_eq!(o.valid, 1);
        // cred.uid comes before euid (uid, gid, suid, sgid, euid): 4 kuid/kgid words after usage.
        assert!(o.cred_euid >= 16, "{o:?}");
        assert_ne!(o.task_real_parent, o.task_cred);
        assert!(o.mm_exe_file > 0 && o.inode_i_ino > o.inode_i_uid, "{o:?}");
    }
}
