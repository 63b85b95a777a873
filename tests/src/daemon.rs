//! notifier itself as a child process (`watch` or `run`), with its output read line by line, and
//! the lab of a daemon test.

use super::*;

/// Sends SIGTERM, then SIGKILL after `grace`, and reaps the child.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
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
        std::thread::sleep(Duration::from_millis(5));
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
