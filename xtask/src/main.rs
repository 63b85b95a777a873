//! `cargo xtask`: the project's own commands.
//!
//! - `setup`: installs what is missing (nightly rust-src, llvm-22-dev, bpf-linker, and the test
//!   packages) and says what it installs;
//! - `build`: builds the eBPF object and the binary;
//! - `run -- ARGS`: builds, then runs `notifier ARGS` (as root, which eBPF needs);
//! - `test`: setup, then fmt, clippy, unit tests and the privileged integration tests.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and test packages that are missing.
    Setup,
    /// Build the eBPF object and the notifier binary (release).
    Build,
    /// Build, then run notifier with the given arguments, e.g. `cargo xtask run -- watch --json`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run fmt, clippy, unit tests and the privileged integration tests.
    Test {
        /// Skip `setup` (everything is already installed).
        #[arg(long)]
        no_setup: bool,
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup(Needs::Test),
        Cmd::Build => build().map(|_| ()),
        Cmd::Run { args } => run(args),
        Cmd::Test { no_setup, filter } => test(no_setup, filter),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The toolchain recipe verified in shared/TOOLCHAIN.md: bpf-linker must be built against the LLVM
/// major version of the nightly compiler (22 here).
const LLVM_MAJOR: &str = "22";
/// Debian packages needed to build: LLVM for bpf-linker.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev"];
/// Debian packages the integration tests drive: real sshd, ssh, sshpass, pamtester, setpriv, and
/// aiosmtpd (a real SMTP server).
const TEST_PACKAGES: &[&str] =
    &["openssh-server", "openssh-client", "sshpass", "pamtester", "util-linux", "python3-aiosmtpd"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, failing with its command line if it fails.
fn check(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// What to set up for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Build,
    Test,
}

fn setup(needs: Needs) -> Result<()> {
    // Debian packages.
    let wanted: Vec<&str> = match needs {
        Needs::Build => BUILD_PACKAGES.to_vec(),
        Needs::Test => BUILD_PACKAGES.iter().chain(TEST_PACKAGES).copied().collect(),
    };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present: {}", wanted.join(" "));
    } else {
        if !is_root() {
            bail!("setup needs root to install {}; run it as root", missing.join(" "));
        }
        println!("setup: installing Debian packages: {}", missing.join(" "));
        check(Command::new("apt-get").args(["update", "-q"]))?;
        check(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }

    // Nightly with rust-src (for -Z build-std=core) and clippy (to lint the eBPF crate).
    let has_nightly = succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]));
    if !has_nightly {
        println!("setup: installing the nightly toolchain");
        check(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let components: &[&str] = if needs == Needs::Test { &["rust-src", "clippy"] } else { &["rust-src"] };
    for component in components {
        if installed.lines().any(|l| l.starts_with(component)) {
            println!("setup: nightly {component} present");
        } else {
            println!("setup: installing nightly {component}");
            check(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
        }
    }

    // bpf-linker, linked against LLVM 22.
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        println!("setup: bpf-linker present");
    } else {
        println!("setup: installing bpf-linker (LLVM {LLVM_MAJOR}; about a minute)");
        check(
            Command::new("cargo")
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
                .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features"])
                .arg(format!("llvm-{LLVM_MAJOR}")),
        )?;
    }
    Ok(())
}

/// Builds everything in release mode and returns the path of the notifier binary.
fn build() -> Result<PathBuf> {
    check(cargo().args(["build", "--release", "--package", "notifier", "--package", "notifier-tests", "--bins"]))
        .context("building notifier (if the eBPF build fails, run `cargo xtask setup`)")?;
    Ok(workspace_root().join("target/release/notifier"))
}

fn run(args: Vec<OsString>) -> Result<()> {
    if !is_root() {
        bail!("notifier loads eBPF programs and must run as root; run `cargo xtask run` as root");
    }
    setup(Needs::Build)?;
    let bin = build()?;
    let status = Command::new(&bin).args(&args).status().with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("notifier exited with {status}");
    }
    Ok(())
}

fn test(no_setup: bool, filter: Option<String>) -> Result<()> {
    if !no_setup {
        setup(Needs::Test)?;
    }
    println!("test: rustfmt");
    check(cargo().args(["fmt", "--all", "--check"]))?;
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
    println!("test: integration tests (real libpam, real sshd, real eBPF)");
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--package", "notifier-tests", "--"])
        .arg("--test-threads=1")
        .env("NOTIFIER_BIN", &bin);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    check(&mut cmd)
}
