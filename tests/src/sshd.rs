//! A private sshd on loopback: OpenSSH 9.2 from the system or 10.0 unpacked by `cargo xtask setup`,
//! with its own host key, config and port.

use super::*;

/// Which OpenSSH a private sshd runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSsh {
    /// The system's `/usr/sbin/sshd` (9.2 on Debian 12).
    System,
    /// 10.0 from bookworm-backports, unpacked by `cargo xtask setup` (sshd, sshd-session,
    /// sshd-auth).
    V10,
}

/// The unpacked OpenSSH 10.0: `NOTIFIER_OPENSSH10` (set by `cargo xtask test`), or target/. `None`
/// (with a reason printed) when it is missing, which under `CI=true` is a failure.
pub fn openssh10() -> Option<PathBuf> {
    set_up(
        "NOTIFIER_OPENSSH10",
        "target/openssh-10.0/root",
        "usr/lib/openssh/sshd-session",
        "OpenSSH 10.0 is not unpacked",
    )
}

/// How to start a private sshd.
#[derive(Clone, Debug)]
pub struct SshdSpec<'a> {
    pub openssh: OpenSsh,
    pub use_pam: bool,
    /// Run through a symlink of this name, so that sshd uses `/etc/pam.d/<name>` (9.2 takes the
    /// PAM service name from argv[0]).
    pub pam_service: Option<&'a str>,
    /// More sshd_config lines.
    pub extra: &'a str,
    /// Environment of the sshd listener (and so of every sshd process it starts).
    pub env: Vec<(String, String)>,
}

impl Default for SshdSpec<'_> {
    fn default() -> Self {
        Self { openssh: OpenSsh::System, use_pam: true, pam_service: None, extra: "", env: Vec::new() }
    }
}

/// A private sshd on 127.0.0.1 and ::1, with its own host key and a client key for tests. Root may
/// log in with the client key (the key is in a lab file, not in /root/.ssh).
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub lab: Lab,
    pub client_key: PathBuf,
    /// The sshd binaries this sshd runs (for `notifier --sshd`).
    pub binaries: Vec<PathBuf>,
}

impl Sshd {
    /// Starts `/usr/sbin/sshd -D` with `extra` config lines.
    pub fn start(extra: &str) -> Self {
        Self::launch(SshdSpec { extra, ..SshdSpec::default() })
    }

    /// Like [`Sshd::start`]; with `pam_service`, sshd runs through a symlink of that name, so it
    /// uses `/etc/pam.d/<pam_service>` (OpenSSH takes the PAM service name from argv[0]).
    pub fn start_as(pam_service: Option<&str>, extra: &str) -> Self {
        Self::launch(SshdSpec { pam_service, extra, ..SshdSpec::default() })
    }

    pub fn launch(spec: SshdSpec<'_>) -> Self {
        let lab = Lab::new();
        fs::create_dir_all("/run/sshd").expect("privsep dir");
        run(Command::new("chmod").args(["755", "/run/sshd"]));
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "notifier-test", "-f"])
                .arg(lab.path(key)));
        }
        fs::copy(lab.path("client_key.pub"), lab.path("authorized_keys_root")).expect("root's key");
        let (sshd, version_lines, binaries) = match spec.openssh {
            OpenSsh::System => (PathBuf::from("/usr/sbin/sshd"), String::new(), vec![PathBuf::from("/usr/sbin/sshd")]),
            OpenSsh::V10 => {
                let root = openssh10().expect("OpenSSH 10.0 (cargo xtask setup)");
                let session = root.join("usr/lib/openssh/sshd-session");
                let auth = root.join("usr/lib/openssh/sshd-auth");
                let lines = format!(
                    "SshdSessionPath {}\nSshdAuthPath {}\nPerSourcePenalties no\n",
                    session.display(),
                    auth.display()
                );
                (root.join("usr/sbin/sshd"), lines, vec![root.join("usr/sbin/sshd"), session, auth])
            }
        };
        let port = free_port();
        let config = lab.path("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nListenAddress [::1]:{port}\nHostKey {host_key}\nPidFile {pid}\n\
                 UsePAM {use_pam}\nPubkeyAuthentication yes\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n\
                 AuthorizedKeysFile .ssh/authorized_keys {lab}/authorized_keys_%u\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n\
                 KbdInteractiveAuthentication no\n{version_lines}{extra}\n",
                host_key = lab.path("host_key").display(),
                pid = lab.path("sshd.pid").display(),
                use_pam = if spec.use_pam { "yes" } else { "no" },
                lab = lab.dir.display(),
                extra = spec.extra,
            ),
        )
        .expect("writing sshd_config");
        let log = fs::File::create(lab.path("sshd.log")).expect("sshd log");
        let program = match spec.pam_service {
            Some(name) => {
                let link = lab.path(name);
                std::os::unix::fs::symlink(&sshd, &link).expect("sshd symlink");
                link
            }
            None => sshd.clone(),
        };
        let child = Command::new(&program)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (cargo xtask setup): {e}", program.display()));
        let client_key = lab.path("client_key");
        let sshd = Self { child, port, lab, client_key, binaries };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}: {}", sshd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// `--sshd PATH` arguments for notifier, naming exactly this sshd's binaries.
    pub fn notifier_args(&self) -> Vec<String> {
        self.binaries.iter().flat_map(|b| ["--sshd".to_string(), b.display().to_string()]).collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.lab.path("sshd.log")).unwrap_or_default()
    }

    /// An ssh client command for `user@host`, bound to `bind` when given. `opts` come first, so
    /// they win over the defaults (ssh keeps the first value given for an option).
    pub fn ssh(&self, user: &str, host: &str, bind: Option<&str>, opts: &[&str]) -> Command {
        self.ssh_with_key(&self.client_key, user, host, bind, opts)
    }

    /// Like [`Sshd::ssh`], offering only the key `key`.
    pub fn ssh_with_key(&self, key: &Path, user: &str, host: &str, bind: Option<&str>, opts: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(opts)
            .arg("-i")
            .arg(key)
            .args(["-o", "StrictHostKeyChecking=no", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.lab.path("known_hosts").display()))
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .args(["-o", "KexAlgorithms=curve25519-sha256", "-p", &self.port.to_string()]);
        if let Some(bind) = bind {
            cmd.args(["-b", bind]);
        }
        cmd.arg(format!("{user}@{host}"));
        cmd.stdin(Stdio::null());
        cmd
    }
}

impl Sshd {
    /// `sshpass -p PASSWORD ssh …` logging in with a password only, from `bind`.
    pub fn password_ssh(&self, user: &str, bind: &str, password: &str) -> Command {
        let mut ssh = self.ssh(
            user,
            "127.0.0.1",
            Some(bind),
            &["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"],
        );
        ssh.arg("true");
        let mut cmd = Command::new("sshpass");
        cmd.args(["-p", password]).arg(ssh.get_program()).args(ssh.get_args()).stdin(Stdio::null());
        cmd
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

/// The fingerprint `ssh-keygen -lf` prints for a public key file.
pub fn ssh_keygen_fingerprint(pubkey: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(pubkey));
    out.split_whitespace().nth(1).expect("fingerprint field").to_string()
}
