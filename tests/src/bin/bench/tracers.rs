//! What the cases drive and measure: pam-driver sessions, the alternatives (the pam_exec recipe and
//! bpftrace), and a process's memory, CPU and wake-ups from /proc.

use super::*;

pub(crate) fn pam_driver() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("pam-driver")
}

/// pam-driver in a network namespace of its own: libpam's audit record resolves an rhost that is
/// not an IP literal, and the system resolver must never be asked.
pub(crate) fn pam_driver_cmd() -> Command {
    let mut cmd = Command::new("unshare");
    cmd.arg("--net").arg(pam_driver());
    cmd
}

/// Runs pam-driver; returns its output line's fields.
pub(crate) fn drive(libpam_dir: Option<&Path>, service: &str, extra: &[&str]) -> HashMap<String, f64> {
    let mut cmd = pam_driver_cmd();
    if let Some(dir) = libpam_dir {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    cmd.args(["--service", service, "--user", "benchuser"]).args(extra);
    let out = run(&mut cmd);
    out.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.trim_end_matches("/s").parse().ok()?))
        })
        .collect()
}

pub(crate) fn read_stamps(path: &Path) -> HashMap<u64, u128> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// Resident MB of `pid` by kind, from /proc/PID/smaps: BPF map mappings (the ring buffer),
/// file-backed mappings, and the rest (heap, stacks, anonymous).
pub(crate) fn rss_parts(pid: u32) -> (f64, f64, f64) {
    let (mut ring, mut file, mut private) = (0u64, 0u64, 0u64);
    let mut name = String::new();
    for line in fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default().lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            name = words.nth(4).unwrap_or_default().to_string();
        } else if first == "Rss:" {
            let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match name.as_str() {
                n if n.starts_with("anon_inode:bpf") => ring += kb,
                n if n.starts_with('/') => file += kb,
                _ => private += kb,
            }
        }
    }
    let mb = |kb: u64| kb as f64 / 1024.0;
    (mb(ring), mb(file), mb(private))
}

pub(crate) fn status_field(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time in clock ticks, and context switches over all threads.
pub(crate) fn cpu_and_switches(pid: u32) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // After the comm: state (not a number, skipped), then ppid …; utime and stime are fields 14
    // and 15 of the whole line, 11 and 12 of the numbers here.
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    let mut switches = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (ticks, switches)
}

pub(crate) fn system_libpam() -> PathBuf {
    let out = Command::new("ldconfig").arg("-p").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.contains("libpam.so.0 ") && l.contains("x86-64"))
                .and_then(|l| l.split(" => ").nth(1))
                .map(|p| PathBuf::from(p.trim()))
        })
        .unwrap_or_else(|| PathBuf::from("/lib/x86_64-linux-gnu/libpam.so.0"))
}

/// A bpftrace script on the same libpam functions notifier hooks, printing one line per call.
pub(crate) fn bpftrace_script(lab: &Lab, libpam: &Path) -> PathBuf {
    let l = libpam.display();
    let text = format!(
        "BEGIN {{ printf(\"ready\\n\"); }}\n\
         uprobe:{l}:pam_start {{ printf(\"start %d %s %s\\n\", pid, str(arg0), str(arg1)); }}\n\
         uprobe:{l}:pam_set_item {{ printf(\"item %d %d\\n\", pid, arg1); }}\n\
         uprobe:{l}:pam_putenv {{ printf(\"env %d %s\\n\", pid, str(arg1)); }}\n\
         uretprobe:{l}:pam_authenticate {{ printf(\"auth %d %d\\n\", pid, retval); }}\n\
         uretprobe:{l}:pam_open_session {{ printf(\"open %d %d\\n\", pid, retval); }}\n\
         uretprobe:{l}:pam_close_session {{ printf(\"close %d %d\\n\", pid, retval); }}\n\
         uprobe:{l}:pam_end {{ printf(\"end %d\\n\", pid); }}\n"
    );
    let path = lab.path("pam.bt");
    fs::write(&path, text).expect("bpftrace script");
    path
}

pub(crate) fn has_bpftrace() -> bool {
    Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// bpftrace running a script, ready (its BEGIN probe printed), killed on drop.
pub(crate) struct Bpftrace {
    pub(crate) child: Child,
    pub(crate) started: Duration,
}

impl Bpftrace {
    pub(crate) fn start(script: &Path) -> Self {
        let begin = Instant::now();
        let mut child = Command::new("bpftrace")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting bpftrace");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("bpftrace did not start");
        Self { child, started: begin.elapsed() }
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// A PAM service file written for the benchmark, removed on drop.
pub(crate) struct PamFile(pub(crate) PathBuf);

impl Drop for PamFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tracer {
    None,
    Notifier,
    PamExec,
    Bpftrace,
}

impl Tracer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::Notifier => "notifier run",
            Tracer::PamExec => "pam_exec recipe",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}
