//! `cargo xtask test`: set-up, rustfmt, both clippy runs, unit tests, the privileged integration
//! tests, and the packaging check.

use super::*;

pub(crate) fn test(no_setup: bool, filter: Option<String>) -> Result<()> {
    if !no_setup {
        setup(Needs::Test)?;
    }
    println!("test: rustfmt");
    check(cargo().args(["fmt", "--all", "--check"]))?;
    println!("test: source file sizes (at most {MAX_LINES} lines outside tests/ and fuzz/)");
    check_file_sizes()?;
    println!("test: clippy (userspace)");
    check(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "notifier-ebpf",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("test: clippy (eBPF, nightly)");
    // Through rustup: `$CARGO` is the stable toolchain's own cargo, which has no `+toolchain`.
    check(
        Command::new("rustup")
            .current_dir(workspace_root())
            .args(["run", "nightly", "cargo", "clippy", "--package", "notifier-ebpf", "--release", "--"])
            .args(["-D", "warnings", "-C", "panic=abort", "-Zpanic_abort_tests"]),
    )?;
    let bin = build()?;
    println!("test: unit tests");
    check(cargo().args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "notifier-ebpf",
        "--exclude",
        "notifier-tests",
    ]))?;
    // The Debian 13 container test installs the package and runs it under the container's systemd.
    let package = deb()?;
    println!("test: integration tests (real libpam, real sshd, real eBPF)");
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--package", "notifier-tests", "--"])
        .arg("--test-threads=1")
        .env("NOTIFIER_BIN", &bin)
        .env("NOTIFIER_OPENSSH10", openssh10_root())
        .env("NOTIFIER_DEBIAN13", debian13_root())
        .env("NOTIFIER_NATS_SERVER", nats_server_bin())
        .env("NOTIFIER_DEB", &package);
    let filtered = filter.is_some();
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    check(&mut cmd)?;
    if filtered {
        return Ok(());
    }
    println!("test: packaging (install, .deb, systemd-analyze)");
    match existing_installation() {
        Some(what) if env::var("CI").as_deref() != Ok("true") => {
            println!("test: packaging check SKIPPED: {what} is installed here, and the check installs and removes notifier for real; run `cargo xtask check-packaging` on a test machine");
            Ok(())
        }
        _ => check_packaging(),
    }
}

/// The most lines a source file outside `tests/` and `fuzz/` may have: past that a file holds more
/// than one job, and is split.
const MAX_LINES: usize = 450;

fn check_file_sizes() -> Result<()> {
    let root = workspace_root();
    let mut long = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(&root).unwrap_or(&path);
            if rel.starts_with("target")
                || rel.starts_with("tests")
                || rel.starts_with("fuzz")
                || rel.starts_with(".git")
            {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = fs::read_to_string(&path)?.lines().count();
                if lines > MAX_LINES {
                    long.push(format!("{} ({lines} lines)", rel.display()));
                }
            }
        }
    }
    if !long.is_empty() {
        bail!("over {MAX_LINES} lines; split each by job: {}", long.join(", "));
    }
    Ok(())
}
