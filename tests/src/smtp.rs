//! A real SMTP server (aiosmtpd) on 127.0.0.1 that saves each message.

use super::*;

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
