//! Attaching the uprobe programs: uprobe_multi links where the kernel has them (Linux 6.6 and
//! later), aya's perf-event uprobes elsewhere.
//!
//! Why not aya's uprobes alone: the kernel detaches each perf-event uprobe under its global
//! `event_mutex`, with grace periods of its own, so the 21 of a default start took about 2 s to go
//! (measured on kernel 6.18: 13 perf-event uprobes closed in 1.47 s, one after the other, and
//! no faster from 13 threads). A uprobe_multi link is one BPF link for all the offsets one program
//! has in one file; it waits once when it goes, and links closed from several threads wait
//! together: the same 13 went in 84 ms. aya 0.14 attaches uprobes through perf events only, and
//! loads them without the expected attach type (`BPF_TRACE_UPROBE_MULTI`) that such a link needs.
//! So the uprobe programs are loaded here, from the same object relocated by `aya-obj` against the
//! maps that aya created (the ring buffers and tables the tracepoints use too), and linked with
//! `BPF_LINK_CREATE`. On older kernels (or with `NOTIFIER_UPROBE_MULTI=0`), aya's path is used
//! unchanged. The tracepoints' links are held here too, so that every link goes at once, each
//! from its own thread: with 3 tracepoints and 16 uprobe_multi links, `notifier watch` exits about
//! 200 ms after SIGTERM, not 2.1 s.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    maps::Map,
    programs::{trace_point::TracePointLink, uprobe::UProbeScope, ProgramError, UProbe},
    Ebpf,
};
use aya_obj::{
    generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type, BPF_F_UPROBE_MULTI_RETURN},
    ProgramSection,
};
use tracing::{debug, info, warn};

use super::{permission_denied, LoadError};

/// The probes' links, detached together when this is dropped.
pub struct Links {
    /// Programs loaded for uprobe_multi, by name, and whether each is a return probe; `None`: this
    /// kernel has no uprobe_multi, and aya attaches perf-event uprobes (held by the programs).
    multi: Option<HashMap<String, (OwnedFd, bool)>>,
    /// The uprobe_multi links and the tracepoints' links.
    links: Vec<Link>,
}

/// One link; dropping it detaches it.
enum Link {
    UprobeMulti(#[allow(dead_code, reason = "held to be closed")] OwnedFd),
    TracePoint(#[allow(dead_code, reason = "held to be closed")] TracePointLink),
}

impl Links {
    /// Loads every uprobe program of `object` (already loaded by aya as `ebpf`, whose maps the
    /// programs use) for uprobe_multi links, when this kernel has them.
    pub fn load(ebpf: &Ebpf, object: &[u8]) -> Self {
        if std::env::var_os("NOTIFIER_UPROBE_MULTI").is_some_and(|v| v == "0") {
            info!("NOTIFIER_UPROBE_MULTI=0: perf-event uprobes (slower to detach).");
            return Self { multi: None, links: Vec::new() };
        }
        if !multi_supported() {
            debug!("No uprobe_multi links in this kernel: perf-event uprobes (slower to detach).");
            return Self { multi: None, links: Vec::new() };
        }
        match load_programs(ebpf, object) {
            Ok(programs) => Self { multi: Some(programs), links: Vec::new() },
            Err(e) => {
                warn!(error = %e, "Cannot load the uprobes for uprobe_multi links; using perf-event uprobes (slower to detach).");
                Self { multi: None, links: Vec::new() }
            }
        }
    }

    /// Whether links are uprobe_multi links.
    pub fn is_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// Attaches `program` to `symbols` in `path` (each with whether it may be missing); returns
    /// how many symbols were probed.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &'static str,
        path: &Path,
        symbols: &[(&'static str, bool)],
    ) -> Result<usize, LoadError> {
        let attach_error = |symbol: &'static str, reason: String| LoadError::Attach {
            program,
            symbol,
            path: path.display().to_string(),
            reason,
        };
        let Some(multi) = &self.multi else {
            return attach_perf(ebpf, program, path, symbols);
        };
        let (prog, ret) = multi
            .get(program)
            .ok_or_else(|| LoadError::Program { program, reason: "not a uprobe program of the object".into() })?;
        let names: Vec<&str> = symbols.iter().map(|(s, _)| *s).collect();
        let found = symbol_offsets(path, &names).map_err(|e| attach_error(symbols[0].0, e))?;
        let mut offsets = Vec::new();
        for (&(symbol, optional), offset) in symbols.iter().zip(found) {
            match offset {
                Some(o) => offsets.push(o),
                None if optional => debug!(symbol, path = %path.display(), "Optional symbol not attached."),
                None => return Err(attach_error(symbol, "the symbol is not in the file".into())),
            }
        }
        if offsets.is_empty() {
            return Ok(0);
        }
        let link = link_create(prog, path, &offsets, *ret).map_err(|e| match permission_denied(&e) {
            true => LoadError::NotPrivileged {
                missing: format!("CAP_SYS_ADMIN: the kernel refused the uprobe link for {program} ({e})"),
            },
            false => attach_error(symbols[0].0, e.to_string()),
        })?;
        self.links.push(Link::UprobeMulti(link));
        Ok(offsets.len())
    }

    /// Keeps a tracepoint's link, to be detached with the others.
    pub fn hold_tracepoint(&mut self, link: TracePointLink) {
        self.links.push(Link::TracePoint(link));
    }

    /// Detaches every link, from several threads: the uprobe_multi links' grace periods overlap,
    /// and the tracepoints (detached one at a time under the kernel's `event_mutex`) go meanwhile.
    pub fn detach(&mut self) {
        let mut links = std::mem::take(&mut self.links);
        // Tracepoints first, so that each starts its serial detach at once.
        links.sort_by_key(|l| matches!(l, Link::UprobeMulti(_)));
        let threads = links.len().clamp(1, 32);
        let mut shares: Vec<Vec<Link>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, link) in links.into_iter().enumerate() {
            shares[i % threads].push(link);
        }
        std::thread::scope(|s| {
            for share in shares {
                s.spawn(move || drop(share));
            }
        });
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.detach();
    }
}

/// aya's perf-event uprobes, one per symbol.
fn attach_perf(
    ebpf: &mut Ebpf,
    program: &'static str,
    path: &Path,
    symbols: &[(&'static str, bool)],
) -> Result<usize, LoadError> {
    let probe: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| LoadError::Program { program, reason: "not in the object".into() })?
        .try_into()
        .map_err(|e: ProgramError| LoadError::Program { program, reason: e.to_string() })?;
    if probe.fd().is_err() {
        probe.load().map_err(|e| LoadError::Program { program, reason: format!("{e:#}") })?;
    }
    let mut attached = 0;
    for &(symbol, optional) in symbols {
        match probe.attach(symbol, path, UProbeScope::AllProcesses) {
            Ok(_) => attached += 1,
            Err(e) if optional => {
                debug!(symbol, path = %path.display(), error = %e, "Optional symbol not attached.");
            }
            Err(e) if permission_denied(&e) => {
                return Err(LoadError::NotPrivileged {
                    missing: format!(
                        "CAP_SYS_ADMIN: the kernel refused perf_event_open for the uprobe on {symbol} ({e})"
                    ),
                });
            }
            Err(e) => {
                return Err(LoadError::Attach {
                    program,
                    symbol,
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(attached)
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`, and every pointer in it outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads one program for uprobe_multi links.
fn prog_load(name: &str, insns: &[bpf_insn], license: &CString) -> std::io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is valid: every field is an integer.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the fields of the BPF_PROG_LOAD member of the union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
    load.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    load.insns = insns.as_ptr() as u64;
    load.insn_cnt = insns.len() as u32;
    load.license = license.as_ptr() as u64;
    for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// One uprobe_multi link of `prog` on `offsets` in `path`, for every process.
fn link_create(prog: &OwnedFd, path: &Path, offsets: &[u64], ret: bool) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: an all-zero bpf_attr is valid: every field is an integer.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the fields of the BPF_LINK_CREATE member of the union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: as above, the uprobe_multi member of the link's union.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = offsets.as_ptr() as u64;
    multi.cnt = offsets.len() as u32;
    multi.flags = if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Whether this kernel has uprobe_multi links: a trivial program loads with that attach type, and
/// a link on `/` is refused as "not a file" (EBADF) rather than unknown (EINVAL), as libbpf probes.
fn multi_supported() -> bool {
    // r0 = 0; exit
    let exit = [bpf_insn_raw(0xb7, 0), bpf_insn_raw(0x95, 0)];
    let license = CString::from(c"GPL");
    let Ok(prog) = prog_load("probe_multi", &exit, &license) else { return false };
    match link_create(&prog, Path::new("/"), &[0], false) {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBADF),
    }
}

fn bpf_insn_raw(code: u8, imm: i32) -> bpf_insn {
    // SAFETY: bpf_insn is plain integers; all zeros is valid.
    let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
    insn.code = code;
    insn.imm = imm;
    insn
}

/// Loads every uprobe program of `object` against the maps of `ebpf`.
fn load_programs(ebpf: &Ebpf, object: &[u8]) -> Result<HashMap<String, (OwnedFd, bool)>, LoadError> {
    let error = |reason: String| LoadError::Program { program: "uprobes", reason };
    let mut obj = aya_obj::Object::parse(object).map_err(|e| error(e.to_string()))?;
    let fds: HashMap<&str, i32> = ebpf.maps().filter_map(|(name, map)| Some((name, map_fd(map)?))).collect();
    let maps = std::mem::take(&mut obj.maps);
    let mut relocations = Vec::new();
    for (name, map) in &maps {
        let fd = *fds.get(name.as_str()).ok_or_else(|| error(format!("map {name} has no descriptor")))?;
        relocations.push((name.as_str(), fd, map));
    }
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(relocations.into_iter(), &text).map_err(|e| error(e.to_string()))?;
    obj.relocate_calls(&text).map_err(|e| error(e.to_string()))?;
    let mut loaded = HashMap::new();
    for (name, program) in &obj.programs {
        let ret = match program.section {
            ProgramSection::UProbe { .. } => false,
            ProgramSection::URetProbe { .. } => true,
            _ => continue,
        };
        let function = &obj.functions[&program.function_key()];
        let fd = prog_load(name, &function.instructions, &program.license).map_err(|e| LoadError::Program {
            program: "uprobes",
            reason: format!("{name}: the kernel refused it for uprobe_multi: {e}"),
        })?;
        loaded.insert(name.clone(), (fd, ret));
    }
    Ok(loaded)
}

/// A map's descriptor (the kinds this object uses).
fn map_fd(map: &Map) -> Option<i32> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::PerfEventArray(d)
        | Map::LpmTrie(d)
        | Map::Queue(d)
        | Map::Stack(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// The file offsets of `symbols` in the ELF file at `path` (`None` for those it lacks), from its
/// dynamic symbols and then its symbol table, as aya finds them.
pub fn symbol_offsets(path: &Path, symbols: &[&str]) -> Result<Vec<Option<u64>>, String> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let data = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let file = object::File::parse(&*data).map_err(|e| format!("not an ELF object: {e}"))?;
    let mut found: Vec<Option<u64>> = vec![None; symbols.len()];
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = sym.name() else { continue };
        let Some(i) = symbols.iter().position(|s| *s == name) else { continue };
        if found[i].is_some() || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Some(section) = sym.section_index().and_then(|i| file.section_by_index(i).ok()) else { continue };
        let Some((file_offset, _)) = section.file_range() else { continue };
        found[i] = Some(sym.address() - section.address() + file_offset);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets found are where the functions' code is: the bytes there in the file are the
    /// bytes of the same functions in the libc this test runs with.
    #[test]
    fn symbol_offsets_point_at_the_functions_code() {
        let maps = fs::read_to_string("/proc/self/maps").expect("maps");
        let libc_path = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so.6"))
            .expect("this test runs with glibc");
        let path = Path::new(libc_path);
        let found = symbol_offsets(path, &["accept", "setresuid", "no_such_symbol_here"]).expect("an ELF file");
        assert_eq!(found[2], None);
        let file = fs::read(path).expect("reading libc");
        for (offset, function) in [(found[0], libc::accept as *const u8), (found[1], libc::setresuid as *const u8)] {
            let offset = offset.expect("libc has accept and setresuid") as usize;
            // SAFETY: the function's first 16 bytes are mapped, executable and readable code.
            let code = unsafe { std::slice::from_raw_parts(function, 16) };
            assert_eq!(&file[offset..offset + 16], code, "offset {offset:#x}");
        }
        assert!(symbol_offsets(Path::new("/proc/self/status"), &["accept"]).is_err());
    }
}
