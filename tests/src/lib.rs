//! Harness for notifier's integration tests: RAII guards for everything a test creates (PAM service
//! files, users, a private sshd, notifier itself), so that every test cleans up after itself even
//! when it fails.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub use serde_json::Value;

/// True when the kernel tests can run. Without root they are skipped with a reason, except under
/// `CI=true`, where a skip would hide a broken setup and so is a failure.
pub fn kernel_tests_enabled() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let reason = "kernel tests need root (to load eBPF, add users and PAM services)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI must run them as root");
    }
    eprintln!("skipped: {reason}");
    false
}

/// A name no other test or run uses: `prefix` + pid + counter, short enough for useradd.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The notifier binary under test: `NOTIFIER_BIN` (set by `cargo xtask test`) or the release build.
pub fn notifier_bin() -> PathBuf {
    std::env::var_os("NOTIFIER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/notifier"))
}

/// Runs a command and returns its stdout, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mounts tracefs on /sys/kernel/tracing unless it is there already (as systemd does at boot).
pub fn mount_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]));
    }
}

/// A scratch directory, removed on drop.
pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("notifier-lab-"));
        fs::create_dir_all(&dir).expect("creating lab dir");
        Self { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `/etc/pam.d/<name>` that permits everything, removed on drop.
pub struct PamService {
    pub name: String,
    path: PathBuf,
}

impl PamService {
    pub fn permit(prefix: &str) -> Self {
        let name = unique(prefix);
        let path = Path::new("/etc/pam.d").join(&name);
        fs::write(
            &path,
            "auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_permit.so\n",
        )
        .expect("writing PAM service");
        Self { name, path }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A local user with a home directory, removed (with the home) on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn new() -> Self {
        let name = unique("ntu");
        // Password "*": no password logs in, but the account is not locked ("!"), which sshd
        // refuses for key logins too when it runs without PAM.
        run(Command::new("useradd").args(["-m", "-s", "/bin/bash", "-p", "*", &name]));
        let id = |flag: &str| run(Command::new("id").args([flag, &name])).trim().parse().expect("numeric id");
        let home = PathBuf::from(format!("/home/{name}"));
        Self { uid: id("-u"), gid: id("-g"), name, home }
    }

    pub fn set_password(&self, password: &str) {
        use std::io::Write as _;
        let mut child = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
        writeln!(child.stdin.take().expect("stdin"), "{}:{password}", self.name).expect("writing to chpasswd");
        assert!(child.wait().expect("chpasswd").success());
    }

    pub fn authorize_key(&self, pubkey: &Path) {
        let ssh = self.home.join(".ssh");
        let (uid, gid) = (self.uid.to_string(), self.gid.to_string());
        run(Command::new("install").args(["-d", "-m", "700", "-o", &uid, "-g", &gid]).arg(&ssh));
        run(Command::new("install")
            .args(["-m", "600", "-o", &uid, "-g", &gid])
            .arg(pubkey)
            .arg(ssh.join("authorized_keys")));
    }
}

impl Default for TestUser {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Processes of the user (a lingering session) would make userdel fail.
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").args(["-r", &self.name]).stderr(Stdio::null()).status();
    }
}

/// Sends SIGTERM, then SIGKILL after `grace`, and reaps the child.
fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill with a pid we own (not yet reaped, so it cannot have been reused).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running `notifier watch`, its stdout lines delivered through a channel.
pub struct Notifier {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Notifier {
    /// Starts `notifier watch ARGS` and waits until its probes are attached.
    pub fn watch(args: &[&str]) -> Self {
        Self::start(&[&["watch"], args].concat())
    }

    /// Starts `notifier run --config CONFIG --json` and waits until its probes are attached.
    pub fn run(config: &Path) -> Self {
        Self::start(&["run", "--json", "--config", config.to_str().expect("UTF-8 path")])
    }

    /// Starts `notifier ARGS` and waits until its probes are attached.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(notifier_bin());
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Starts `cmd` (notifier, perhaps through a wrapper such as setpriv, perhaps with extra
    /// environment) and waits until its probes are attached.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e} (build notifier with `cargo xtask build`)"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("Streaming login events.") {
                    let _ = ready_tx.send(());
                }
                log.lock().map(|mut l| l.push_str(&(line + "\n"))).ok();
            }
        });
        let mut me = Self { child, lines, stderr };
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = me.child.try_wait();
            panic!("notifier did not attach within 30 s ({status:?}); stderr:\n{}", me.stderr());
        }
        me
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Collects JSON events until `done` says the set is complete or `timeout` passes.
    pub fn json_until(&self, timeout: Duration, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        while !done(&events) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            let Some(line) = self.next_line(left) else { break };
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("invalid JSON line {line:?}: {e}"));
            events.push(value);
        }
        events
    }

    /// Lines until `timeout` passes with nothing new for `quiet`.
    pub fn lines_until_quiet(&self, quiet: Duration, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            match self.next_line(quiet) {
                Some(line) => lines.push(line),
                None => break,
            }
        }
        lines
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a pid we own (not yet reaped, so it cannot have been reused).
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until stderr contains `text`; false after `timeout`.
    pub fn wait_stderr(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills notifier with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops notifier with SIGTERM and returns its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        stop(&mut self.child, Duration::from_secs(10));
        self.child.wait().expect("reaping notifier")
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// A state directory and a config file for one `notifier run`, removed on drop.
pub struct DaemonLab {
    pub lab: Lab,
    pub config: PathBuf,
}

impl DaemonLab {
    /// A config with `state_dir` in the lab, then what `extra` writes (it may place files in the lab).
    pub fn new(extra: impl FnOnce(&Lab) -> String) -> Self {
        let lab = Lab::new();
        let config = lab.path("notifier.toml");
        let text = format!("state_dir = \"{}\"\n{}\n", lab.path("state").display(), extra(&lab));
        fs::write(&config, text).expect("writing the config");
        Self { lab, config }
    }

    /// A path under the state directory.
    pub fn state(&self, rel: &str) -> PathBuf {
        self.lab.path("state").join(rel)
    }

    /// `notifier known list --json` for this config.
    pub fn known_json(&self) -> Value {
        let out = run(Command::new(notifier_bin()).args(["known", "list", "--json", "--config"]).arg(&self.config));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("known list --json: {e}: {out}"))
    }
}

/// Events of one kind.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

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
    let root = std::env::var_os("NOTIFIER_OPENSSH10")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/openssh-10.0/root"));
    if root.join("usr/lib/openssh/sshd-session").exists() {
        return Some(root);
    }
    let reason = format!("OpenSSH 10.0 is not unpacked in {} (run `cargo xtask setup`)", root.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
    None
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

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr").port()
}

/// The fingerprint `ssh-keygen -lf` prints for a public key file.
pub fn ssh_keygen_fingerprint(pubkey: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(pubkey));
    out.split_whitespace().nth(1).expect("fingerprint field").to_string()
}

/// A private copy of the system libpam, so a test's probes see only its own PAM traffic.
pub fn private_libpam(lab: &Lab) -> PathBuf {
    let system =
        ["/lib/x86_64-linux-gnu/libpam.so.0", "/usr/lib/x86_64-linux-gnu/libpam.so.0", "/usr/lib64/libpam.so.0"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("system libpam (install libpam0g)");
    let copy = lab.path("libpam.so.0");
    fs::copy(system, &copy).expect("copying libpam");
    copy
}

/// A DNS server on 127.0.0.1 for tests: answers PTR queries from a table, or never answers at all.
pub struct DnsServer {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl DnsServer {
    /// Answers `PTR` queries for the addresses in `names`; NXDOMAIN for others.
    pub fn answering(names: &[(std::net::IpAddr, &str)]) -> Self {
        Self::spawn(Some(names.iter().map(|(ip, n)| (reverse_name(*ip), n.to_string())).collect()))
    }

    /// Receives queries and never answers.
    pub fn silent() -> Self {
        Self::spawn(None)
    }

    fn spawn(names: Option<Vec<(String, String)>>) -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding the test DNS server");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let port = socket.local_addr().expect("addr").port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Some(names) = &names else { continue };
                if let Some(reply) = dns_reply(&buf[..n], names) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `7.100.51.198.in-addr.arpa` / nibble form for IPv6.
fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s: Vec<String> =
                v6.octets().iter().flat_map(|b| [b & 0xf, b >> 4]).rev().map(|n| format!("{n:x}")).collect();
            s.reverse();
            format!("{}.ip6.arpa", s.join("."))
        }
    }
}

/// Builds the answer to one DNS query (RFC 1035 wire format).
fn dns_reply(query: &[u8], names: &[(String, String)]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_lowercase());
        pos += len;
    }
    let question_end = pos + 4;
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let qname = labels.join(".");
    let answer = names.iter().find(|(q, _)| *q == qname).map(|(_, n)| n).filter(|_| qtype == 12);
    let mut r = Vec::with_capacity(128);
    r.extend_from_slice(&query[..2]); // id
    r.extend_from_slice(&[0x81, if answer.is_some() { 0x80 } else { 0x83 }]); // response, RA, NOERROR/NXDOMAIN
    r.extend_from_slice(&[0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    r.extend_from_slice(query.get(12..question_end)?);
    if let Some(name) = answer {
        r.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 60]); // pointer to qname, PTR, IN, TTL 60
        let mut rdata = Vec::new();
        for label in name.trim_end_matches('.').split('.') {
            rdata.push(label.len() as u8);
            rdata.extend_from_slice(label.as_bytes());
        }
        rdata.push(0);
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    Some(r)
}

/// A value in a MaxMind DB data section.
pub enum MmdbValue {
    Str(&'static str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, MmdbValue)>),
    Array(Vec<MmdbValue>),
}

fn mmdb_control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 285, "test values are small");
    let (low, extra) = if size < 29 { (size as u8, None) } else { (29, Some((size - 29) as u8)) };
    if kind <= 7 {
        out.push(kind << 5 | low);
    } else {
        out.push(low);
        out.push(kind - 7);
    }
    out.extend(extra);
}

/// An unsigned integer of `kind`, in as few big-endian bytes as it needs.
fn mmdb_uint(out: &mut Vec<u8>, kind: u8, be: &[u8]) {
    let bytes: Vec<u8> = be.iter().copied().skip_while(|&b| b == 0).collect();
    mmdb_control(out, kind, bytes.len());
    out.extend_from_slice(&bytes);
}

fn mmdb_encode(out: &mut Vec<u8>, v: &MmdbValue) {
    match v {
        MmdbValue::Str(s) => {
            mmdb_control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        MmdbValue::U16(n) => mmdb_uint(out, 5, &n.to_be_bytes()),
        MmdbValue::U32(n) => mmdb_uint(out, 6, &n.to_be_bytes()),
        MmdbValue::U64(n) => mmdb_uint(out, 9, &n.to_be_bytes()),
        MmdbValue::Array(items) => {
            mmdb_control(out, 11, items.len());
            for item in items {
                mmdb_encode(out, item);
            }
        }
        MmdbValue::Map(entries) => {
            mmdb_control(out, 7, entries.len());
            for (k, v) in entries {
                mmdb_encode(out, &MmdbValue::Str(k));
                mmdb_encode(out, v);
            }
        }
    }
}

/// Writes a MaxMind DB (format 2.0, IPv4 search tree, 32-bit records) mapping IPv4 networks to
/// records, for tests. Networks must not overlap.
pub fn write_mmdb(path: &Path, database_type: &'static str, networks: &[(&str, MmdbValue)]) {
    // Binary trie over the network bits; node 0 is the root. Records: node index, or the data marker.
    const EMPTY: u32 = u32::MAX;
    let mut nodes: Vec<[u32; 2]> = vec![[EMPTY, EMPTY]];
    let mut data = Vec::new();
    let mut leaves: Vec<(usize, usize, usize)> = Vec::new(); // (node, side, data offset)
    for (cidr, value) in networks {
        let (addr, prefix) = cidr.split_once('/').expect("CIDR");
        let addr: std::net::Ipv4Addr = addr.parse().expect("IPv4");
        let bits = u32::from(addr);
        let prefix: usize = prefix.parse().expect("prefix");
        let offset = data.len();
        mmdb_encode(&mut data, value);
        let mut node = 0;
        for i in 0..prefix {
            let side = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == prefix {
                leaves.push((node, side, offset));
            } else {
                if nodes[node][side] == EMPTY {
                    nodes.push([EMPTY, EMPTY]);
                    nodes[node][side] = (nodes.len() - 1) as u32;
                }
                node = nodes[node][side] as usize;
            }
        }
    }
    let count = nodes.len() as u32;
    for (node, side, offset) in leaves {
        nodes[node][side] = count + 16 + offset as u32;
    }
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            out.extend_from_slice(&(if *r == EMPTY { count } else { *r }).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    let metadata = MmdbValue::Map(vec![
        ("binary_format_major_version", MmdbValue::U16(2)),
        ("binary_format_minor_version", MmdbValue::U16(0)),
        ("build_epoch", MmdbValue::U64(1_700_000_000)),
        ("database_type", MmdbValue::Str(database_type)),
        ("description", MmdbValue::Map(vec![("en", MmdbValue::Str("notifier test database"))])),
        ("ip_version", MmdbValue::U16(4)),
        ("languages", MmdbValue::Array(vec![MmdbValue::Str("en")])),
        ("node_count", MmdbValue::U32(count)),
        ("record_size", MmdbValue::U16(32)),
    ]);
    mmdb_encode(&mut out, &metadata);
    fs::write(path, out).expect("writing mmdb");
}

/// One HTTP request as a receiver saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered with.
    pub status: u16,
    /// When the request was read.
    pub received: std::time::SystemTime,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body of {} is not JSON: {e}", self.path))
    }
    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            let mut out = Vec::new();
            let bytes = s.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        String::from_utf8_lossy(&self.body)
            .split('&')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (decode(k), decode(v))))
            .collect()
    }
}

/// An HTTP/1.1 receiver on 127.0.0.1 that records every request and answers with scripted
/// statuses (then 200).
pub struct HttpReceiver {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<std::collections::VecDeque<u16>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpReceiver {
    pub fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").expect("binding the receiver"))
    }

    /// A receiver on a given port (to bring a "down" receiver up).
    pub fn on_port(port: u16) -> Self {
        Self::on(TcpListener::bind(("127.0.0.1", port)).expect("binding the receiver port"))
    }

    fn on(listener: TcpListener) -> Self {
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reqs, scr, stopped) = (Arc::clone(&requests), Arc::clone(&script), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (reqs, scr) = (Arc::clone(&reqs), Arc::clone(&scr));
                        std::thread::spawn(move || serve(stream, &reqs, &scr));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, requests, script, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next responses' statuses, in order (200 after them).
    pub fn respond_with(&self, statuses: &[u16]) {
        self.script.lock().expect("lock").extend(statuses);
    }

    /// Drops the statuses not yet used (from now on every answer is 200); returns how many.
    pub fn clear_script(&self) -> usize {
        let mut script = self.script.lock().expect("lock");
        let n = script.len();
        script.clear();
        n
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the requests so far, or `timeout` passes.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if done(&reqs) || Instant::now() > deadline {
                return reqs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: std::net::TcpStream, reqs: &Mutex<Vec<Request>>, script: &Mutex<std::collections::VecDeque<u16>>) {
    use std::io::{Read as _, Write as _};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or_default().to_string(), first.next().unwrap_or_default().to_string());
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))).collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let status = script.lock().ok().and_then(|mut s| s.pop_front()).unwrap_or(200);
    reqs.lock().expect("lock").push(Request {
        method,
        path,
        headers,
        body,
        status,
        received: std::time::SystemTime::now(),
    });
    let answer = if status == 200 { r#"{"status":1,"ok":true}"# } else { r#"{"status":0,"errors":["scripted"]}"# };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// A real SMTP server (aiosmtpd) on 127.0.0.1 writing every message into a Maildir.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    pub fn start(lab: &Lab) -> Self {
        let port = free_port();
        let maildir = lab.path("maildir"); // aiosmtpd creates the Maildir layout only for a new path
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting aiosmtpd (install python3-aiosmtpd: cargo xtask setup)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, maildir }
    }

    /// The raw messages received so far.
    pub fn messages(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        dir.flatten().filter_map(|f| fs::read_to_string(f.path()).ok()).collect()
    }

    pub fn wait(&self, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= count || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(3));
    }
}

/// A port on 127.0.0.1 with nothing listening (until a test binds it).
/// The body of `GET path` from an HTTP server on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// The value of the Prometheus sample `name{labels}` (written exactly as exposed) in `text`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn unused_port() -> u16 {
    free_port()
}
