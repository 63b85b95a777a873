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

/// The toolchain recipe verified in shared/TOOLCHAIN.md: bpf-linker must be built against the LLVM
/// major version of the nightly compiler (22 here).
const LLVM_MAJOR: &str = "22";
/// Debian packages needed to build: LLVM for bpf-linker.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev"];
/// Debian packages the benchmarks compare with.
const BENCH_PACKAGES: &[&str] = &["bpftrace"];
/// Debian packages the integration tests drive: real sshd, ssh, sshpass, pamtester, setpriv,
/// aiosmtpd (a real SMTP server), strace (to check the unit's system call filter), and for the
/// packaging check man-db and systemd-analyze.
const TEST_PACKAGES: &[&str] = &[
    "openssh-server",
    "openssh-client",
    "sshpass",
    "pamtester",
    "util-linux",
    "python3-aiosmtpd",
    "strace",
    "man-db",
    "systemd",
];

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
    Bench,
}

fn setup(needs: Needs) -> Result<()> {
    // Debian packages.
    let wanted: Vec<&str> = match needs {
        Needs::Build => BUILD_PACKAGES.to_vec(),
        Needs::Test => BUILD_PACKAGES.iter().chain(TEST_PACKAGES).copied().collect(),
        Needs::Bench => BUILD_PACKAGES.iter().chain(TEST_PACKAGES).chain(BENCH_PACKAGES).copied().collect(),
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
    let components: &[&str] = if needs == Needs::Build { &["rust-src"] } else { &["rust-src", "clippy"] };
    for component in components {
        if installed.lines().any(|l| l.starts_with(component)) {
            println!("setup: nightly {component} present");
        } else {
            println!("setup: installing nightly {component}");
            check(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
        }
    }

    if needs != Needs::Build {
        ensure_cargo_deb()?;
        fetch_openssh10()?;
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

/// OpenSSH 10.0 (sshd-session, sshd-auth) for the sshd witness tests, from Debian's
/// bookworm-backports, which runs on bookworm's libraries. It is downloaded with a private APT
/// configuration and unpacked under target/: /etc/apt is untouched and nothing is installed.
const OPENSSH10_VERSION: &str = "1:10.0p1-7~bpo12+1";
const OPENSSH10_PACKAGES: &[&str] = &["openssh-server", "openssh-client", "openssh-sftp-server"];

/// Where the unpacked OpenSSH 10.0 lives (its `usr/sbin/sshd`, `usr/lib/openssh/sshd-session`…).
fn openssh10_root() -> PathBuf {
    workspace_root().join("target/openssh-10.0/root")
}

fn fetch_openssh10() -> Result<()> {
    let root = openssh10_root();
    if root.join("usr/lib/openssh/sshd-session").exists() {
        println!("setup: OpenSSH 10.0 present in {}", root.display());
        return Ok(());
    }
    println!("setup: downloading OpenSSH {OPENSSH10_VERSION} from bookworm-backports (for the sshd witness tests)");
    let base = root.parent().context("openssh dir")?.to_path_buf();
    let _ = fs::remove_dir_all(&base);
    for dir in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(base.join(dir))?;
    }
    let mirror = debian_mirror();
    fs::write(
        base.join("sources.list"),
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} bookworm-backports main\n"),
    )?;
    fs::write(
        base.join("apt.conf"),
        format!(
            "Dir::Etc::SourceList \"{b}/sources.list\";\nDir::Etc::SourceParts \"/nonexistent\";\n\
             Dir::State::Lists \"{b}/lists\";\nDir::Cache \"{b}/cache\";\nAPT::Sandbox::User \"root\";\n",
            b = base.display()
        ),
    )?;
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("APT_CONFIG", base.join("apt.conf")).current_dir(base.join("debs")).args(["-q"]).args(args);
        cmd
    };
    check(&mut apt(&["update"]))?;
    let pinned: Vec<String> = OPENSSH10_PACKAGES.iter().map(|p| format!("{p}={OPENSSH10_VERSION}")).collect();
    if !succeeds(apt(&[]).arg("download").args(&pinned)) {
        // A newer backport replaced it: take the suite's current one (and nothing half-fetched).
        fs::remove_dir_all(base.join("debs"))?;
        fs::create_dir_all(base.join("debs"))?;
        let latest: Vec<String> = OPENSSH10_PACKAGES.iter().map(|p| format!("{p}/bookworm-backports")).collect();
        check(apt(&[]).arg("download").args(&latest))?;
    }
    for deb in fs::read_dir(base.join("debs"))? {
        check(Command::new("dpkg-deb").arg("-x").arg(deb?.path()).arg(&root))?;
    }
    println!("setup: OpenSSH 10.0 unpacked in {}", root.display());
    Ok(())
}

/// The Debian mirror the system uses (deb822 or one-line sources), or deb.debian.org.
fn debian_mirror() -> String {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let one_line = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    deb822
        .lines()
        .find_map(|l| l.strip_prefix("URIs:").and_then(|u| u.split_whitespace().find(|u| !u.contains("security"))))
        .or_else(|| {
            one_line
                .lines()
                .filter(|l| l.starts_with("deb "))
                .flat_map(|l| l.split_whitespace())
                .find(|w| w.starts_with("http") && !w.contains("security"))
        })
        .unwrap_or("http://deb.debian.org/debian")
        .trim_end_matches('/')
        .to_string()
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
        .env("NOTIFIER_BIN", &bin)
        .env("NOTIFIER_OPENSSH10", openssh10_root());
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

fn bench(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and start sshd; run `cargo xtask bench` as root");
    }
    setup(Needs::Bench)?;
    let bin = build()?;
    let root = workspace_root();
    let fuzz_results = root.join("target/release/fuzz-results.txt");
    fuzz(if quick { 10 } else { 60 }, &fuzz_results)?;
    let mut cmd = Command::new(root.join("target/release/bench"));
    cmd.arg("--out").arg(root.join("BENCHMARKS.md")).arg("--fuzz").arg(&fuzz_results).env("NOTIFIER_BIN", &bin);
    if quick {
        cmd.arg("--quick");
    }
    check(&mut cmd)
}

/// The cargo-fuzz targets in fuzz/.
const FUZZ_TARGETS: &[&str] = &["decode", "authinfo", "config"];

/// Runs each fuzz target for `seconds`; writes `name runs seconds outcome` lines to `results`.
/// A crash fails the command, after all targets ran, with the artifact's path.
fn fuzz(seconds: u64, results: &Path) -> Result<()> {
    if !succeeds(cargo().args(["fuzz", "--version"])) {
        println!("setup: installing cargo-fuzz (a few minutes)");
        check(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let mut lines = String::new();
    let mut crashed = Vec::new();
    for target in FUZZ_TARGETS {
        println!("bench: fuzzing {target} for {seconds} s");
        let out = Command::new("rustup")
            .current_dir(workspace_root().join("fuzz"))
            .args(["run", "nightly", "cargo", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let outcome = if out.status.success() {
            "no crash".to_string()
        } else {
            crashed.push(*target);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            format!("CRASH (see fuzz/artifacts/{target}/)")
        };
        lines.push_str(&format!("{target} {runs} {seconds} {outcome}\n"));
    }
    std::fs::write(results, lines)?;
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}; the inputs are in fuzz/artifacts/", crashed.join(", "));
    }
    Ok(())
}

fn ensure_cargo_deb() -> Result<()> {
    if succeeds(cargo().args(["deb", "--version"])) {
        println!("setup: cargo-deb present");
        return Ok(());
    }
    println!("setup: installing cargo-deb (a few minutes)");
    check(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))
}

/// Where `install` puts things: absolute paths on the target system, staged under `destdir`.
#[derive(clap::Args, Clone)]
struct InstallArgs {
    /// Prefix of the binary, man page and completions.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage the files under this directory instead of / (for packagers); systemd is left alone.
    #[arg(long)]
    destdir: Option<PathBuf>,
}

const UNIT: &str = "/etc/systemd/system/notifier.service";
const CONFIG_DIR: &str = "/etc/notifier";
const CONFIG: &str = "/etc/notifier/notifier.toml";
const CREDENTIALS: &str = "/etc/notifier/credentials";
const STATE: &str = "/var/lib/notifier";

impl InstallArgs {
    /// `abs` on the staged system.
    fn at(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        match &self.destdir {
            Some(root) => root.join(abs.strip_prefix("/").unwrap_or(abs)),
            None => abs.to_path_buf(),
        }
    }

    fn bin(&self) -> PathBuf {
        self.prefix.join("bin/notifier")
    }

    fn man(&self) -> PathBuf {
        self.prefix.join("share/man/man1/notifier.1.gz")
    }

    /// (generated asset, installed path) of each completion script.
    fn completions(&self) -> [(&'static str, PathBuf); 3] {
        [
            ("notifier.bash", self.prefix.join("share/bash-completion/completions/notifier")),
            ("_notifier", self.prefix.join("share/zsh/site-functions/_notifier")),
            ("notifier.fish", self.prefix.join("share/fish/vendor_completions.d/notifier.fish")),
        ]
    }

    fn live(&self) -> bool {
        self.destdir.is_none()
    }
}

/// Generates the man page and the completion scripts with the built binary (the hidden
/// `notifier generate`, from the clap definitions) into target/release/assets.
fn generate_assets(bin: &Path) -> Result<PathBuf> {
    let dir = workspace_root().join("target/release/assets");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let generate = |what: &str| -> Result<Vec<u8>> {
        let out = Command::new(bin)
            .args(["generate", what])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("notifier generate {what} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    let man = dir.join("notifier.1");
    std::fs::write(&man, generate("man")?)?;
    check(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&man))?;
    for (shell, file) in [("bash", "notifier.bash"), ("zsh", "_notifier"), ("fish", "notifier.fish")] {
        std::fs::write(dir.join(file), generate(shell)?)?;
    }
    Ok(dir)
}

/// Copies `from` to `to` with `mode`, creating the parent directories.
fn put(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // Through a temporary file and a rename, so a running binary is replaced, not overwritten.
    let tmp = to.with_extension("xtask-tmp");
    std::fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    println!("install: {}", to.display());
    Ok(())
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn install(args: &InstallArgs) -> Result<()> {
    if args.live() && !is_root() {
        bail!("installing into / needs root; run `cargo xtask install` as root, or stage with --destdir DIR");
    }
    setup(Needs::Build)?;
    let built = build()?;
    let assets = generate_assets(&built)?;
    let root = workspace_root();
    put(&built, &args.at(args.bin()), 0o755)?;
    put(&assets.join("notifier.1.gz"), &args.at(args.man()), 0o644)?;
    for (asset, path) in args.completions() {
        put(&assets.join(asset), &args.at(path), 0o644)?;
    }
    // The packaged unit runs /usr/bin/notifier; this one runs the binary just installed.
    let unit = std::fs::read_to_string(root.join("packaging/notifier.service"))?;
    let unit = unit.replace("ExecStart=/usr/bin/notifier ", &format!("ExecStart={} ", args.bin().display()));
    let staged_unit = root.join("target/release/assets/notifier.service");
    std::fs::write(&staged_unit, unit)?;
    put(&staged_unit, &args.at(UNIT), 0o644)?;
    if args.at(CONFIG).exists() {
        println!("install: {} exists; kept as it is", args.at(CONFIG).display());
    } else {
        put(&root.join("packaging/config.example.toml"), &args.at(CONFIG), 0o600)?;
    }
    let credentials = args.at(CREDENTIALS);
    std::fs::create_dir_all(&credentials)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700))?;
    }
    if args.live() && systemd_running() {
        check(Command::new("systemctl").arg("daemon-reload"))?;
        check(Command::new("systemctl").args(["enable", "--now", "notifier.service"]))?;
        println!("install: notifier.service enabled and started; `journalctl -u notifier -f` shows its events");
    } else if args.live() {
        println!(
            "install: systemd is not running here, so the service was not enabled; on a systemd host run \
             `systemctl enable --now notifier`, or run `notifier run` directly"
        );
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("uninstall: removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn uninstall(args: &InstallArgs, purge: bool) -> Result<()> {
    if args.live() && !is_root() {
        bail!("uninstalling from / needs root; run `cargo xtask uninstall` as root");
    }
    if args.live() && systemd_running() {
        // Not an error when it was never enabled.
        let _ = Command::new("systemctl").args(["disable", "--now", "notifier.service"]).status();
    }
    remove(&args.at(UNIT))?;
    remove(&args.at(args.bin()))?;
    remove(&args.at(args.man()))?;
    for (_, path) in args.completions() {
        remove(&args.at(path))?;
    }
    if args.live() && systemd_running() {
        check(Command::new("systemctl").arg("daemon-reload"))?;
    }
    if purge {
        for dir in [CONFIG_DIR, STATE] {
            let dir = args.at(dir);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                println!("uninstall: removed {}", dir.display());
            }
        }
    } else {
        println!(
            "uninstall: kept {CONFIG_DIR} and {STATE} (the config, secrets and learned history); --purge removes them"
        );
    }
    Ok(())
}

/// Builds the .deb and returns its path.
fn deb() -> Result<PathBuf> {
    setup(Needs::Build)?;
    ensure_cargo_deb()?;
    let built = build()?;
    generate_assets(&built)?;
    let out = cargo()
        .args(["deb", "--package", "notifier", "--no-build"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path =
        stdout.lines().rev().find(|l| l.trim_end().ends_with(".deb")).context("cargo deb printed no .deb path")?;
    let path = PathBuf::from(path.trim());
    println!("deb: {}", path.display());
    Ok(path)
}

/// An existing notifier on this machine that the packaging check would clobber.
fn existing_installation() -> Option<String> {
    let packaged = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "notifier"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
    if packaged {
        return Some("the notifier Debian package".into());
    }
    ["/usr/local/bin/notifier", "/usr/bin/notifier", UNIT, CONFIG_DIR]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
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

/// What a user checks after installing: the binary runs, `man notifier` and the completions are
/// found, the config is private, and systemd accepts the unit. Prints the exposure figure.
fn verify_installed(bin: &Path, unit: &Path, completions: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let version = output(Command::new(bin).arg("--version"))?;
    if !version.starts_with("notifier ") {
        bail!("{} --version printed {version:?}", bin.display());
    }
    println!("check: {} --version: {}", bin.display(), version.trim());
    let man = output(Command::new("man").args(["-w", "notifier"]))?;
    println!("check: man -w notifier: {}", man.trim());
    let page = output(Command::new("man").args(["-P", "cat", "notifier"]).env("MANWIDTH", "80"))?;
    if !page.contains("notifier") || !page.contains("check-config") {
        bail!("`man notifier` does not show the subcommands:\n{page}");
    }
    for path in completions {
        if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
            bail!("completion script {} is missing or empty", path.display());
        }
    }
    let bash =
        completions.iter().find(|p| p.to_string_lossy().contains("bash-completion")).context("no bash completion")?;
    check(Command::new("bash").arg("-n").arg(bash))?;
    println!("check: completions in place ({} files; bash -n passes)", completions.len());
    let mode = std::fs::metadata(CONFIG)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("{CONFIG} has mode {mode:o}; it may hold secrets and must be 0600");
    }
    let mode = std::fs::metadata(CREDENTIALS)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        bail!("{CREDENTIALS} has mode {mode:o}; want 0700");
    }
    let verify = Command::new("systemd-analyze").arg("verify").arg(unit).output()?;
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    if !verify.status.success() || complaints.contains("notifier") {
        bail!("systemd-analyze verify {} failed:\n{complaints}", unit.display());
    }
    println!("check: systemd-analyze verify {}: ok", unit.display());
    let security = output(Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(unit))?;
    let exposure = security.lines().find(|l| l.contains("Overall exposure level")).context("no exposure figure")?;
    println!("check: systemd-analyze security --offline=yes: {}", exposure.trim_start_matches(['→', ' ']));
    Ok(())
}

fn check_packaging() -> Result<()> {
    if !is_root() {
        bail!("check-packaging installs notifier system-wide and needs root");
    }
    if let Some(what) = existing_installation() {
        bail!("{what} is installed here; check-packaging installs and removes notifier for real, so run it on a test machine");
    }
    // 1. cargo xtask install, then uninstall --purge.
    let args = InstallArgs { prefix: PathBuf::from("/usr/local"), destdir: None };
    install(&args)?;
    let completions: Vec<PathBuf> = args.completions().into_iter().map(|(_, p)| p).collect();
    let checked = verify_installed(&args.bin(), Path::new(UNIT), &completions);
    uninstall(&args, true)?;
    checked?;
    if let Some(left) = existing_installation() {
        bail!("uninstall --purge left {left} behind");
    }
    println!("check: xtask install and uninstall --purge: ok");

    // 2. The .deb: dpkg -i, verify, dpkg --purge.
    let deb = deb()?;
    check(Command::new("dpkg").arg("-i").arg(&deb))?;
    let files = output(Command::new("dpkg").args(["-L", "notifier"]))?;
    let unit = files.lines().find(|l| l.ends_with("/notifier.service")).context("the .deb has no notifier.service")?;
    let completions: Vec<PathBuf> =
        files.lines().filter(|l| l.contains("completion")).map(PathBuf::from).filter(|p| p.is_file()).collect();
    let conffiles = output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "notifier"]))?;
    let checked = if !conffiles.contains(CONFIG) {
        Err(anyhow::anyhow!("{CONFIG} is not a conffile of the package: {conffiles:?}"))
    } else if completions.len() < 3 {
        Err(anyhow::anyhow!("the .deb has {} completion scripts, want bash, zsh and fish", completions.len()))
    } else {
        verify_installed(Path::new("/usr/bin/notifier"), Path::new(unit), &completions)
    };
    check(Command::new("dpkg").args(["--purge", "notifier"]))?;
    checked?;
    if let Some(left) = existing_installation() {
        bail!("dpkg --purge left {left} behind");
    }
    println!("check: .deb install, verify and purge: ok");
    Ok(())
}
