//! Builds the eBPF object with the nightly toolchain (through aya-build) so that a plain
//! `cargo build` on stable produces a binary with the probes embedded.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    // Fuzz targets (`cargo fuzz`, which sets `--cfg fuzzing`) exercise the parsers only, and the
    // sanitizer flags must not reach the eBPF build: embed an empty object instead.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out).join("notifier"), b"").context("writing the empty object")?;
        return Ok(());
    }
    let metadata_root = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&metadata_root)
        .parent()
        .ok_or_else(|| anyhow!("notifier crate has no parent directory"))?
        .join("notifier-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "notifier-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object (needs nightly, rust-src and bpf-linker: run `cargo xtask setup`)")?;
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    strip_dwarf(&std::path::Path::new(&out).join("notifier"))
}

/// Drops the DWARF sections (and their relocations) from the eBPF object before it is embedded.
/// The eBPF crate is built with debug info because bpf-linker makes the object's BTF from it;
/// the kernel and aya read only the BTF. The DWARF was three quarters of the object (730 of
/// 960 KB), carried in the binary and read in part at every load.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    use object::build::elf::SectionData;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data).context("parsing the eBPF object")?;
    let dwarf: Vec<_> = elf.sections.iter().filter(|s| s.name.starts_with(b".debug")).map(|s| s.id()).collect();
    for section in elf.sections.iter_mut() {
        if dwarf.contains(&section.id()) || section.sh_info_section.is_some_and(|of| dwarf.contains(&of)) {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM's BPF objects keep section names in the symbols' string table, which the builder
    // treats as the symbols' alone: give the section names their own table.
    if !elf.sections.iter().any(|s| matches!(s.data, SectionData::SectionString)) {
        let names = elf.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    elf.write(&mut stripped).context("writing the eBPF object")?;
    std::fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}
