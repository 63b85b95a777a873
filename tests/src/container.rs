//! A Debian 13 container with systemd as PID 1 (libpam 1.7, OpenSSH 10.0, systemd 257), booted
//! with systemd-nspawn from a fresh copy of the root file system that `cargo xtask setup` builds
//! with mmdebstrap. The recipe and its pitfalls are in the lab notes (shared/TESTLAB.md): the
//! unified cgroup hierarchy, `--register=no`, `bpf` and `perf_event_open` let through nspawn's
//! filter, systemd-modules-load masked, and no private network, so the container's sshd listens
//! on 127.0.0.1 and a port of its own.

use super::*;

/// The pristine root file system: `NOTIFIER_DEBIAN13` (set by `cargo xtask test`) or target/.
/// `None` (with a reason printed) when it is missing, which under `CI=true` is a failure.
pub fn debian13_root() -> Option<PathBuf> {
    set_up(
        "NOTIFIER_DEBIAN13",
        "target/debian13/pristine",
        "usr/lib/openssh/sshd-session",
        "no Debian 13 root file system",
    )
}

/// A booted container; shut down and removed on drop.
pub struct Container {
    /// The container's root file system, as the host sees it.
    pub root: PathBuf,
    /// Its sshd's port on 127.0.0.1.
    pub ssh_port: u16,
    nspawn: Option<Child>,
    /// The container's PID 1 (systemd), as the host sees it.
    pub init: u32,
}

impl Container {
    /// A fresh copy of `pristine` with its sshd on 127.0.0.1 and a free port, and `user` (with
    /// `pubkey` authorized) added. `prepare` may change the copy before it boots.
    pub fn prepare(pristine: &Path, user: &str, pubkey: &Path) -> Self {
        let root = workspace_root().join("target/debian13").join(unique("run"));
        run(Command::new("cp").args(["-a"]).arg(pristine).arg(&root));
        let ssh_port = free_port();
        fs::write(
            root.join("etc/ssh/sshd_config.d/notifier-test.conf"),
            format!("ListenAddress 127.0.0.1:{ssh_port}\nPasswordAuthentication no\n"),
        )
        .expect("sshd drop-in");
        // It would fail with every capability and leave the system degraded.
        let _ = std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/systemd-modules-load.service"));
        run(Command::new("chroot").arg(&root).args(["useradd", "-m", "-s", "/bin/sh", "-p", "*", user]));
        let ssh = root.join("home").join(user).join(".ssh");
        fs::create_dir_all(&ssh).expect("~/.ssh");
        fs::copy(pubkey, ssh.join("authorized_keys")).expect("authorized_keys");
        run(Command::new("chroot").arg(&root).args([
            "chown",
            "-R",
            &format!("{user}:{user}"),
            &format!("/home/{user}"),
        ]));
        Self { root, ssh_port, nspawn: None, init: 0 }
    }

    /// Boots it and waits until systemd says `running` (or `degraded`, which fails the test with
    /// the failed units named).
    pub fn boot(&mut self) {
        let nspawn = Command::new("systemd-nspawn")
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .args(["-q", "-D"])
            .arg(&self.root)
            .args([
                "-b",
                "--console=passive",
                "--register=no",
                "--keep-unit",
                "--capability=all",
                "--system-call-filter=bpf perf_event_open",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn (install systemd-container)");
        let nspawn_pid = nspawn.id();
        self.nspawn = Some(nspawn);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "the container did not boot within 60 s");
            std::thread::sleep(Duration::from_millis(200));
            if self.init == 0 {
                self.init = child_named(nspawn_pid, "systemd").unwrap_or(0);
                continue;
            }
            let state = self.exec(&["systemctl", "is-system-running"]);
            match state.trim() {
                "running" => break,
                "degraded" => panic!("the container is degraded:\n{}", self.exec(&["systemctl", "--failed"])),
                _ => {}
            }
        }
    }

    /// Runs `args` inside the container (all its namespaces); returns stdout, whatever the status.
    pub fn exec(&self, args: &[&str]) -> String {
        let out =
            Command::new("nsenter").args(["-t", &self.init.to_string(), "-a"]).args(args).output().expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like `exec`, and fails with stderr unless it succeeds.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        run(Command::new("nsenter").args(["-t", &self.init.to_string(), "-a"]).args(args))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            // SIGTERM shuts the container down cleanly in about 3 s.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(nspawn.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(nspawn.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The pid of the child of `parent` whose command name is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c: &u32| fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == comm))
}

/// The .deb under test: `NOTIFIER_DEB` (set by `cargo xtask test`), or the newest in
/// target/debian. `None` (with a reason printed) when there is none, which under `CI=true` fails.
pub fn package_under_test() -> Option<PathBuf> {
    if let Some(deb) = std::env::var_os("NOTIFIER_DEB") {
        return Some(PathBuf::from(deb));
    }
    let dir = workspace_root().join("target/debian");
    let newest = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    if newest.is_none() {
        let reason = format!("no .deb in {} (run `cargo xtask deb`)", dir.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        eprintln!("skipped: {reason}");
    }
    newest
}
