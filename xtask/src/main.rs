//! `cargo xtask`: the project's own commands.
//!
//! - `setup`: installs what is missing (nightly rust-src, llvm-22-dev, bpf-linker, and the test
//!   packages) and says what it installs;
//! - `build`: builds the eBPF object and the binary;
//! - `run -- ARGS`: builds, then runs `notifier ARGS` (as root, which eBPF needs);
//! - `test`: setup, then fmt, clippy, unit tests, the privileged integration tests, and the
//!   packaging check;
//! - `install` / `uninstall`: put notifier in place system-wide (or under `--destdir`);
//! - `deb`: build the Debian package with cargo-deb;
//! - `check-packaging`: install, verify and remove both the `install` layout and the .deb.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod package;
mod setup;
mod test;

use bench::*;
use package::*;
use setup::*;
use test::*;

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
    /// Install notifier: binary, systemd unit, default config (an existing one is kept), man page
    /// and shell completions; then enable and start the service if systemd is running.
    Install(InstallArgs),
    /// Remove what `install` put in place; the config, secrets and state stay unless --purge.
    Uninstall {
        #[command(flatten)]
        args: InstallArgs,
        /// Also remove /etc/notifier and /var/lib/notifier (the learned history and alert spool).
        #[arg(long)]
        purge: bool,
    },
    /// Build the Debian package (target/debian/notifier_<version>-1_<arch>.deb) with cargo-deb.
    Deb,
    /// Run the benchmarks against the alternatives (pam_exec recipe, bpftrace) and rewrite
    /// BENCHMARKS.md (root; about 15 minutes, 4 with --quick).
    Bench {
        /// Fewer repetitions: noisier figures, for a quick look.
        #[arg(long)]
        quick: bool,
    },
    /// Install, verify and remove notifier for real, both through `install` and through the .deb
    /// (root; changes the system while it runs).
    CheckPackaging,
    /// Set up, then run fmt, clippy, unit tests, the privileged integration tests and the
    /// packaging check.
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
        Cmd::Install(args) => install(&args),
        Cmd::Uninstall { args, purge } => uninstall(&args, purge),
        Cmd::Deb => deb().map(|_| ()),
        Cmd::Bench { quick } => bench(quick),
        Cmd::CheckPackaging => check_packaging(),
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

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
