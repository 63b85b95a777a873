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
    .context("building the eBPF object (needs nightly, rust-src and bpf-linker: run `cargo xtask setup`)")
}
