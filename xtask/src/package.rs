//! Installing and packaging: `install`, `uninstall`, `deb`, and `check-packaging`, which installs,
//! verifies and removes both layouts for real.

use super::*;

/// Where `install` puts things: absolute paths on the target system, staged under `destdir`.
#[derive(clap::Args, Clone)]
pub(crate) struct InstallArgs {
    /// Prefix of the binary, man page and completions.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage the files under this directory instead of / (for packagers); systemd is left alone.
    #[arg(long)]
    destdir: Option<PathBuf>,
}

pub(crate) const UNIT: &str = "/etc/systemd/system/notifier.service";
pub(crate) const CONFIG_DIR: &str = "/etc/notifier";
pub(crate) const CONFIG: &str = "/etc/notifier/notifier.toml";
pub(crate) const CREDENTIALS: &str = "/etc/notifier/credentials";
pub(crate) const STATE: &str = "/var/lib/notifier";

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

    fn man_dir(&self) -> PathBuf {
        self.prefix.join("share/man/man1")
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

/// Generates the man pages (notifier(1) and one per subcommand, into `man/`) and the completion
/// scripts with the built binary (the hidden `notifier generate`, from the clap definitions) into
/// target/release/assets.
pub(crate) fn generate_assets(bin: &Path) -> Result<PathBuf> {
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
    let man = dir.join("man");
    // Pages of subcommands that no longer exist must not be packaged.
    if man.exists() {
        std::fs::remove_dir_all(&man)?;
    }
    std::fs::create_dir_all(&man)?;
    check(Command::new(bin).args(["generate", "man"]).arg(&man).stdout(std::process::Stdio::null()))?;
    for page in man_pages(&man)? {
        check(Command::new("gzip").args(["-9", "-n", "-f"]).arg(man.join(page)))?;
    }
    for (shell, file) in [("bash", "notifier.bash"), ("zsh", "_notifier"), ("fish", "notifier.fish")] {
        std::fs::write(dir.join(file), generate(shell)?)?;
    }
    Ok(dir)
}

/// The file names of notifier's man pages in `dir` (`notifier.1.gz`, `notifier-watch.1.gz`, …).
fn man_pages(dir: &Path) -> Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut pages: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("notifier.1") || n.starts_with("notifier-")) && n.contains(".1"))
        .collect();
    pages.sort();
    Ok(pages)
}

/// Copies `from` to `to` with `mode`, creating the parent directories.
pub(crate) fn put(from: &Path, to: &Path, mode: u32) -> Result<()> {
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

pub(crate) fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub(crate) fn install(args: &InstallArgs) -> Result<()> {
    if args.live() && !is_root() {
        bail!("installing into / needs root; run `cargo xtask install` as root, or stage with --destdir DIR");
    }
    setup(Needs::Build)?;
    let built = build()?;
    let assets = generate_assets(&built)?;
    let root = workspace_root();
    put(&built, &args.at(args.bin()), 0o755)?;
    for page in man_pages(&assets.join("man"))? {
        put(&assets.join("man").join(&page), &args.at(args.man_dir().join(&page)), 0o644)?;
    }
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
    // Drop-ins (`notifier.d/*.toml`), read after notifier.toml; upgrades never touch them.
    std::fs::create_dir_all(args.at(CONFIG_DIR).join("notifier.d"))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700))?;
        // The unit's ConfigurationDirectoryMode=: systemd warns when the directory differs.
        std::fs::set_permissions(args.at(CONFIG_DIR), std::fs::Permissions::from_mode(0o700))?;
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

pub(crate) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("uninstall: removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

pub(crate) fn uninstall(args: &InstallArgs, purge: bool) -> Result<()> {
    if args.live() && !is_root() {
        bail!("uninstalling from / needs root; run `cargo xtask uninstall` as root");
    }
    if args.live() && systemd_running() {
        // Not an error when it was never enabled.
        let _ = Command::new("systemctl").args(["disable", "--now", "notifier.service"]).status();
    }
    remove(&args.at(UNIT))?;
    remove(&args.at(args.bin()))?;
    for page in man_pages(&args.at(args.man_dir()))? {
        remove(&args.at(args.man_dir().join(page)))?;
    }
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
pub(crate) fn deb() -> Result<PathBuf> {
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
pub(crate) fn existing_installation() -> Option<String> {
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

/// What a user checks after installing: the binary runs, `man notifier` and the completions are
/// found, the config is private, and systemd accepts the unit. Prints the exposure figure.
pub(crate) fn verify_installed(bin: &Path, unit: &Path, completions: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let version = output(Command::new(bin).arg("--version"))?;
    if !version.starts_with("notifier ") {
        bail!("{} --version printed {version:?}", bin.display());
    }
    println!("check: {} --version: {}", bin.display(), version.trim());
    let man = output(Command::new("man").args(["-w", "notifier"]))?;
    println!("check: man -w notifier: {}", man.trim());
    // The file `man` finds, read as it is (`-l`): man-db's cache of formatted pages can hold an
    // older install's page, newer than the packaged file's fixed mtime.
    let show = |name: &str| -> Result<String> {
        let file = output(Command::new("man").args(["-w", name]))?;
        output(Command::new("man").args(["-P", "cat", "-l", file.trim()]).env("MANWIDTH", "80"))
    };
    let page = show("notifier")?;
    if !page.contains("notifier") || !page.contains("check-config") {
        bail!("`man notifier` does not show the subcommands:\n{page}");
    }
    for section in ["FILES", "SIGNALS", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"] {
        if !page.lines().any(|l| l == section) {
            bail!("`man notifier` has no {section} section:\n{page}");
        }
    }
    // Each subcommand that notifier(1) names has its own page.
    for sub in ["notifier-watch", "notifier-status", "notifier-spool-retry", "notifier-known-list"] {
        let page = show(sub)?;
        if !page.contains("EXIT STATUS") {
            bail!("`man {sub}` has no EXIT STATUS:\n{page}");
        }
    }
    println!("check: man notifier has FILES, SIGNALS, ENVIRONMENT, EXIT STATUS; subcommand pages found");
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
    for dir in [CONFIG_DIR, CREDENTIALS] {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            bail!("{dir} has mode {mode:o}; want 0700 (the unit's ConfigurationDirectoryMode=)");
        }
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

pub(crate) fn check_packaging() -> Result<()> {
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
