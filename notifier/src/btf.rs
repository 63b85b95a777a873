//! Finds, in the running kernel's BTF, the offsets of the few `task_struct`, `cred`, `mm_struct`,
//! `file` and `inode` fields the probes read to identify a caller (parent, effective uid, and the
//! inode, owner and mode of its executable) and an sshd process's exit status. aya has no CO-RE for
//! Rust programs, so the loader resolves them here and hands them to the object as a global.
//!
//! The lookup is one pass over the type section of `/sys/kernel/btf/vmlinux` (the format is the
//! kernel's `Documentation/bpf/btf.rst`), which indexes where each type starts and notes the
//! structs of the wanted names; then only those structs (and the anonymous structs and unions
//! inside them) are read. A general BTF parser that builds every type took about 100 ms of
//! notifier's start-up here; this takes a few. The unit tests check it against btf-rs.

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

/// The fields, as (struct, field).
const FIELDS: [(&str, &str); 11] = [
    ("task_struct", "real_parent"),
    ("task_struct", "tgid"),
    ("task_struct", "cred"),
    ("task_struct", "mm"),
    ("cred", "euid"),
    ("mm_struct", "exe_file"),
    ("file", "f_inode"),
    ("inode", "i_uid"),
    ("inode", "i_mode"),
    ("inode", "i_ino"),
    ("task_struct", "exit_code"),
];

/// Reads the offsets from the running kernel.
pub fn task_offsets() -> Result<TaskOffsets, OffsetError> {
    let bytes = std::fs::read(VMLINUX_BTF).map_err(|e| OffsetError::Btf { reason: e.to_string() })?;
    let wanted = ["task_struct", "cred", "mm_struct", "file", "inode", "nsproxy", "mnt_namespace", "ns_common"];
    let btf = Btf::parse(&bytes, &wanted).map_err(|reason| OffsetError::Btf { reason })?;
    let mut o = [0u32; FIELDS.len()];
    for (slot, (strukt, field)) in o.iter_mut().zip(FIELDS) {
        *slot = btf.member_offset(strukt, field).ok_or(OffsetError::Missing { strukt, field })?;
    }
    Ok(TaskOffsets {
        valid: 1,
        task_real_parent: o[0],
        task_tgid: o[1],
        task_cred: o[2],
        task_mm: o[3],
        cred_euid: o[4],
        mm_exe_file: o[5],
        file_f_inode: o[6],
        inode_i_uid: o[7],
        inode_i_mode: o[8],
        inode_i_ino: o[9],
        task_exit_code: o[10],
        ..mount_ns_offsets(&btf)
    })
}

/// The mount namespace's offsets, or all 0 (`mount_ns_valid` 0) when the layout differs: then
/// containers started after notifier are not followed, and nothing else changes.
fn mount_ns_offsets(btf: &Btf<'_>) -> TaskOffsets {
    let found = (
        btf.member_offset("task_struct", "nsproxy"),
        btf.member_offset("nsproxy", "mnt_ns"),
        btf.member_offset("mnt_namespace", "ns"),
        btf.member_offset("ns_common", "inum"),
    );
    match found {
        (Some(nsproxy), Some(mnt_ns), Some(ns), Some(inum)) => TaskOffsets {
            task_nsproxy: nsproxy,
            nsproxy_mnt_ns: mnt_ns,
            mnt_ns_inum: ns + inum,
            mount_ns_valid: 1,
            ..TaskOffsets::zeroed()
        },
        _ => TaskOffsets::zeroed(),
    }
}

const MAGIC: u16 = 0xeb9f;
const TYPE_LEN: usize = 12;
const MEMBER_LEN: usize = 12;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// The parts of one BTF blob that the lookup needs.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of type id `i + 1` (id 0 is `void`).
    starts: Vec<u32>,
    /// Ids of the structs whose name is one of the wanted ones, with that name.
    structs: Vec<(&'a str, u32)>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Indexes `data` and notes the structs named in `wanted`.
    fn parse(data: &'a [u8], wanted: &[&'a str]) -> Result<Self, String> {
        let magic = data.get(..2).map(|m| u16::from_ne_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err("not BTF of this machine's byte order (bad magic)".into());
        }
        let field = |at: usize| u32_at(data, at).map(|v| v as usize).ok_or("truncated header");
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len).ok_or_else(|| "a section lies outside the file".to_string())
        };
        let (types, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut btf = Self { types, strings, starts: Vec::with_capacity(types.len() / 24), structs: Vec::new() };
        let mut at = 0;
        while at < types.len() {
            let (name_off, info) =
                (u32_at(types, at).ok_or("truncated type")?, u32_at(types, at + 4).ok_or("truncated type")?);
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            btf.starts.push(at as u32);
            if kind == KIND_STRUCT {
                let name = btf.name(name_off);
                if let Some(name) = wanted.iter().find(|w| **w == name) {
                    btf.structs.push((name, btf.starts.len() as u32));
                }
            }
            let extra = match kind {
                1 | 14 | 17 => 4,                            // INT, VAR, DECL_TAG
                3 => 12,                                     // ARRAY
                4 | 5 | 15 | 19 => vlen * 12,                // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => vlen * 8,                          // ENUM, FUNC_PROTO
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
                other => return Err(format!("unknown BTF kind {other}")),
            };
            at += TYPE_LEN + extra;
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &'a str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Byte offset of `field` in the struct named `strukt` (one of the wanted names), looking
    /// through anonymous struct and union members.
    fn member_offset(&self, strukt: &str, field: &str) -> Option<u32> {
        self.structs.iter().filter(|(name, _)| *name == strukt).find_map(|(_, id)| self.find_member(*id, field, 0))
    }

    fn find_member(&self, id: u32, field: &str, depth: u32) -> Option<u32> {
        let at = *self.starts.get(id.checked_sub(1)? as usize)? as usize;
        let info = u32_at(self.types, at + 4)?;
        let (kind, vlen, bitfields) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
        if !matches!(kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..vlen {
            let m = at + TYPE_LEN + i * MEMBER_LEN;
            let (name_off, member_type, offset) =
                (u32_at(self.types, m)?, u32_at(self.types, m + 4)?, u32_at(self.types, m + 8)?);
            // With kind_flag set, the low 24 bits are the bit offset and the high 8 a bitfield size.
            let bits = if bitfields { offset & 0x00ff_ffff } else { offset };
            let name = self.name(name_off);
            if name == field {
                return Some(bits / 8);
            }
            if name.is_empty() {
                if let Some(inner) = self.find_member(member_type, field, depth + 1) {
                    return Some(bits / 8 + inner);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_btf() -> Option<Vec<u8>> {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            assert!(std::env::var_os("CI").is_none(), "CI machines have kernel BTF");
            eprintln!("skipped: no {VMLINUX_BTF}");
            return None;
        }
        Some(std::fs::read(VMLINUX_BTF).expect("kernel BTF"))
    }

    /// The reference: btf-rs, a complete parser.
    fn reference(btf: &btf_rs::Btf, strukt: &str, field: &str) -> Option<u32> {
        fn find(btf: &btf_rs::Btf, s: &btf_rs::Struct, field: &str) -> Option<u32> {
            use btf_rs::BtfType as _;
            for m in &s.members {
                let name = btf.resolve_name(m).unwrap_or_default();
                if name == field {
                    return Some(m.bit_offset() / 8);
                }
                if name.is_empty() {
                    let inner = m.get_type_id().ok().and_then(|id| btf.resolve_type_by_id(id).ok());
                    if let Some(btf_rs::Type::Struct(inner) | btf_rs::Type::Union(inner)) = inner {
                        if let Some(off) = find(btf, &inner, field) {
                            return Some(m.bit_offset() / 8 + off);
                        }
                    }
                }
            }
            None
        }
        btf.resolve_types_by_name(strukt).ok()?.iter().find_map(|t| match t {
            btf_rs::Type::Struct(s) => find(btf, s, field),
            _ => None,
        })
    }

    #[test]
    fn offsets_match_a_complete_parser_on_the_running_kernel() {
        let Some(bytes) = kernel_btf() else { return };
        let reference_btf = btf_rs::Btf::from_bytes(&bytes).expect("btf-rs parses the kernel BTF");
        // The probes' fields, plus fields inside anonymous unions and bitfield structs.
        let extra = [
            ("task_struct", "pid"),
            ("task_struct", "comm"),
            ("file", "f_mode"),
            ("inode", "i_sb"),
            ("sk_buff", "len"),
            ("sk_buff", "mark"),
        ];
        let wanted = ["task_struct", "cred", "mm_struct", "file", "inode", "sk_buff"];
        let btf = Btf::parse(&bytes, &wanted).expect("parse");
        for (strukt, field) in FIELDS.into_iter().chain(extra) {
            let ours = btf.member_offset(strukt, field);
            assert!(ours.is_some(), "{strukt}.{field} not found");
            assert_eq!(ours, reference(&reference_btf, strukt, field), "{strukt}.{field}");
        }
        assert_eq!(btf.member_offset("task_struct", "no_such_field"), None);
        let o = task_offsets().expect("offsets");
        assert_eq!(o.valid, 1);
        assert_eq!(o.task_exit_code, reference(&reference_btf, "task_struct", "exit_code").unwrap());
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"\x7fELF\x02\x01", &[]).err().unwrap().contains("magic"));
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC.to_ne_bytes());
        header.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, 1000, 1000, 10] {
            header.extend_from_slice(&v.to_ne_bytes());
        }
        assert!(Btf::parse(&header, &[]).err().unwrap().contains("outside"));
    }
}
