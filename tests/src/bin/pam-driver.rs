//! A PAM session driver: calls the real libpam (`pam_start`, `pam_set_item`, optionally
//! `pam_authenticate`, `pam_open_session`, `pam_close_session`, `pam_end`) N times, from T threads,
//! as fast as possible or at a target rate. libpam is loaded with dlopen, so `LD_LIBRARY_PATH`
//! selects a private copy (which is how tests keep other PAM traffic out of their probes).

use std::{
    ffi::{c_char, c_int, c_void, CString},
    os::unix::ffi::OsStrExt as _,
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// PAM service (a file in /etc/pam.d).
    #[arg(long)]
    service: String,
    /// User name passed to pam_start (any bytes).
    #[arg(long)]
    user: std::ffi::OsString,
    /// PAM_RHOST; `{i}` is replaced by the session's number (1, 2, …), e.g. `198.51.100.{i}`.
    #[arg(long)]
    rhost: Option<std::ffi::OsString>,
    #[arg(long)]
    tty: Option<std::ffi::OsString>,
    /// Sessions in all.
    #[arg(long, default_value_t = 1)]
    count: u64,
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// Target sessions per second over all threads; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Call pam_authenticate before opening the session.
    #[arg(long)]
    authenticate: bool,
    /// Hostile input: each session gets its own user, rhost and tty made from this seed: long
    /// (up to 9 KiB), binary, and full of control characters (no NUL, which C strings cannot hold).
    /// Run it under `unshare --net`: libpam's audit record resolves any rhost that is not an IP
    /// literal through the system resolver.
    #[arg(long, value_name = "SEED")]
    hostile: Option<u64>,
    /// Write one line per opened session to FILE: its number (as in `{i}`) and the
    /// CLOCK_REALTIME nanoseconds when pam_open_session returned, and how many nanoseconds the
    /// call took.
    #[arg(long, value_name = "FILE")]
    stamps: Option<std::path::PathBuf>,
    /// Instead of sessions: one pam_start, then N calls of pam_set_item(PAM_RHOST), timed, and
    /// pam_end. Prints `calls=N ns_per_call=X`: the cost of one probe hit, without the noise of a
    /// whole session (which reads /etc/pam.d and loads modules).
    #[arg(long, value_name = "N")]
    set_item_loop: Option<u64>,
    /// A hostile flood for SECONDS from `--threads` threads, as whoever runs the driver:
    /// `set-item` (one pam_start per thread, then pam_set_item(PAM_RHOST, the rhost) in a loop) or
    /// `start` (pam_start in a loop, never pam_end). Prints `calls=N`.
    #[arg(long, value_name = "MODE", requires = "seconds")]
    flood: Option<Flood>,
    #[arg(long, value_name = "SECONDS")]
    seconds: Option<f64>,
    /// After each pam_open_session, fork a child that drops to this uid (and gid) and then calls
    /// pam_close_session and pam_end on its copy of the handle, as a hostile child of su would;
    /// the parent waits for it, then closes the session itself.
    #[arg(long, value_name = "UID")]
    child_as: Option<u32>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Flood {
    SetItem,
    Start,
}

thread_local! {
    /// How long this thread's last pam_open_session took, in nanoseconds.
    static OPEN_NS: std::cell::Cell<u128> = const { std::cell::Cell::new(0) };
}

fn realtime_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// xorshift64*: a small, seedable generator; enough for test input.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly short strings, one in ten long; bytes 1..=255, with control characters and bytes
    /// that are not UTF-8 over-represented.
    fn hostile(&mut self) -> CString {
        let len = match self.below(10) {
            0 => 1000 + self.below(8200),
            1..=3 => 100 + self.below(400),
            _ => 1 + self.below(40),
        };
        let bytes: Vec<u8> = (0..len)
            .map(|_| match self.below(4) {
                0 => 1 + self.below(31) as u8,     // control characters, ESC among them
                1 => 0x80 + self.below(128) as u8, // lone UTF-8 continuation and lead bytes
                _ => 1 + self.below(255) as u8,
            })
            .collect();
        CString::new(bytes).unwrap_or_else(|_| unreachable!("no NUL byte is generated"))
    }

    /// An rhost: a third of them valid IPv4 literals, the rest hostile.
    fn rhost(&mut self) -> CString {
        if self.below(3) == 0 {
            let text = format!("127.0.{}.{}", self.below(256), 1 + self.below(254));
            CString::new(text).unwrap_or_else(|_| unreachable!("no NUL"))
        } else {
            self.hostile()
        }
    }
}

const PAM_TTY: c_int = 3;
const PAM_RHOST: c_int = 4;
const PAM_CONV_ERR: c_int = 19;

#[repr(C)]
struct PamConv {
    conv: extern "C" fn(c_int, *mut *const c_void, *mut *mut c_void, *mut c_void) -> c_int,
    appdata: *mut c_void,
}

/// No module used with this driver converses; any attempt fails cleanly.
extern "C" fn no_conversation(_: c_int, _: *mut *const c_void, _: *mut *mut c_void, _: *mut c_void) -> c_int {
    PAM_CONV_ERR
}

type StartFn = unsafe extern "C" fn(*const c_char, *const c_char, *const PamConv, *mut *mut c_void) -> c_int;
type SetItemFn = unsafe extern "C" fn(*mut c_void, c_int, *const c_void) -> c_int;
type HandleFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

struct Pam {
    start: StartFn,
    set_item: SetItemFn,
    authenticate: HandleFn,
    open: HandleFn,
    close: HandleFn,
    end: HandleFn,
    _lib: libloading::Library,
}

impl Pam {
    fn load() -> Result<Self, libloading::Error> {
        // SAFETY: libpam's initialisers are safe to run; the symbols have the C signatures of
        // <security/pam_appl.h>, declared above.
        unsafe {
            let lib = libloading::Library::new("libpam.so.0")?;
            Ok(Self {
                start: *lib.get::<StartFn>(b"pam_start\0")?,
                set_item: *lib.get::<SetItemFn>(b"pam_set_item\0")?,
                authenticate: *lib.get::<HandleFn>(b"pam_authenticate\0")?,
                open: *lib.get::<HandleFn>(b"pam_open_session\0")?,
                close: *lib.get::<HandleFn>(b"pam_close_session\0")?,
                end: *lib.get::<HandleFn>(b"pam_end\0")?,
                _lib: lib,
            })
        }
    }

    /// One whole session: whether it was opened, and the first step that failed.
    fn session(
        &self,
        a: &Strings,
        authenticate: bool,
        child_as: Option<u32>,
        opened_at: &mut u128,
    ) -> (bool, Option<&'static str>) {
        let conv = PamConv { conv: no_conversation, appdata: std::ptr::null_mut() };
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `h` is only used after pam_start succeeded
        // and until pam_end.
        unsafe {
            if (self.start)(a.service.as_ptr(), a.user.as_ptr(), &conv, &mut h) != 0 {
                return (false, Some("pam_start"));
            }
            let mut failed = None;
            if let Some(rhost) = &a.rhost {
                if (self.set_item)(h, PAM_RHOST, rhost.as_ptr().cast()) != 0 {
                    failed = failed.or(Some("pam_set_item(PAM_RHOST)"));
                }
            }
            if let Some(tty) = &a.tty {
                if (self.set_item)(h, PAM_TTY, tty.as_ptr().cast()) != 0 {
                    failed = failed.or(Some("pam_set_item(PAM_TTY)"));
                }
            }
            if authenticate && (self.authenticate)(h, 0) != 0 {
                failed = failed.or(Some("pam_authenticate"));
            }
            let before = realtime_ns();
            let opened = failed.is_none() && (self.open)(h, 0) == 0;
            *opened_at = realtime_ns();
            OPEN_NS.set(*opened_at - before);
            if failed.is_none() && !opened {
                failed = Some("pam_open_session");
            }
            if let (true, Some(uid)) = (opened, child_as) {
                match libc::fork() {
                    0 => {
                        if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                            libc::_exit(2);
                        }
                        (self.close)(h, 0);
                        (self.end)(h, 0);
                        libc::_exit(0);
                    }
                    -1 => failed = failed.or(Some("fork")),
                    child => {
                        let mut status = 0;
                        if libc::waitpid(child, &mut status, 0) != child || status != 0 {
                            failed = failed.or(Some("the child that dropped privileges"));
                        }
                    }
                }
            }
            if opened && (self.close)(h, 0) != 0 {
                failed = failed.or(Some("pam_close_session"));
            }
            (self.end)(h, if failed.is_none() { 0 } else { 1 });
            (opened, failed)
        }
    }
}

struct Strings {
    service: CString,
    user: CString,
    rhost: Option<CString>,
    tty: Option<CString>,
}

/// The rhost of session `n`: the template with `{i}` replaced.
fn numbered(template: &std::ffi::OsStr, n: u64) -> CString {
    let bytes = template.as_bytes();
    match bytes.windows(3).position(|w| w == b"{i}") {
        Some(at) => {
            let mut v = bytes[..at].to_vec();
            v.extend_from_slice(n.to_string().as_bytes());
            v.extend_from_slice(&bytes[at + 3..]);
            CString::new(v).unwrap_or_else(|_| std::process::exit(2))
        }
        None => cstring(template),
    }
}

/// The 1-based number of session `i` of thread `t` among `threads`.
fn t_index(t: u64, i: u64, threads: u64) -> u64 {
    i * threads + t + 1
}

fn cstring(s: &std::ffi::OsStr) -> CString {
    CString::new(s.as_bytes()).unwrap_or_else(|_| {
        eprintln!("pam-driver: arguments cannot contain NUL bytes");
        std::process::exit(2)
    })
}

fn main() {
    let args = Args::parse();
    let pam = match Pam::load() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pam-driver: cannot load libpam.so.0: {e}; install libpam0g");
            std::process::exit(2);
        }
    };
    let strings = Strings {
        service: cstring(args.service.as_ref()),
        user: cstring(&args.user),
        rhost: args.rhost.as_deref().map(cstring),
        tty: args.tty.as_deref().map(cstring),
    };
    if let (Some(mode), Some(seconds)) = (args.flood, args.seconds) {
        flood(&pam, &strings, mode, args.threads.max(1), Duration::from_secs_f64(seconds));
        return;
    }
    if let Some(calls) = args.set_item_loop {
        set_item_loop(&pam, &strings, calls);
        return;
    }
    let threads = args.threads.max(1);
    let per_thread_interval = (args.rate > 0).then(|| Duration::from_secs_f64(threads as f64 / args.rate as f64));
    let begin = Instant::now();
    let tally: Tally = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let t_id = t;
                let n = args.count / threads + u64::from(t < args.count % threads);
                let (pam, strings, template) = (&pam, &strings, args.rhost.as_deref());
                let stamping = args.stamps.is_some();
                scope.spawn(move || {
                    let start = Instant::now();
                    let mut tally = Tally::default();
                    for i in 0..n {
                        if let Some(interval) = per_thread_interval {
                            let due = start + interval.mul_f64(i as f64);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        let numbered_rhost;
                        let generated;
                        let strings = match (args.hostile, template) {
                            (Some(seed), _) => {
                                let mut rng = Rng::new(seed ^ t_index(t_id, i, threads));
                                generated = Strings {
                                    service: strings.service.clone(),
                                    user: rng.hostile(),
                                    rhost: Some(rng.rhost()),
                                    tty: Some(rng.hostile()),
                                };
                                &generated
                            }
                            (None, template) => match template {
                                Some(t) if t.as_bytes().windows(3).any(|w| w == b"{i}") => {
                                    numbered_rhost = Strings {
                                        service: strings.service.clone(),
                                        user: strings.user.clone(),
                                        rhost: Some(numbered(t, t_index(t_id, i, threads))),
                                        tty: strings.tty.clone(),
                                    };
                                    &numbered_rhost
                                }
                                _ => strings,
                            },
                        };
                        let mut at = 0;
                        let (opened, failed) = pam.session(strings, args.authenticate, args.child_as, &mut at);
                        tally.opened += u64::from(opened);
                        if opened && stamping {
                            tally.stamps.push((t_index(t_id, i, threads), at, OPEN_NS.get()));
                        }
                        if let Some(step) = failed {
                            *tally.failed.entry(step).or_default() += 1;
                        }
                    }
                    tally
                })
            })
            .collect();
        let mut all = Tally::default();
        for h in handles {
            let t = h.join().unwrap_or_else(|_| std::process::exit(3));
            all.opened += t.opened;
            all.stamps.extend(t.stamps);
            for (step, n) in t.failed {
                *all.failed.entry(step).or_default() += n;
            }
        }
        all
    });
    let elapsed = begin.elapsed();
    if let Some(path) = &args.stamps {
        let text: String = tally.stamps.iter().map(|(i, ns, took)| format!("{i} {ns} {took}\n")).collect();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("pam-driver: writing {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    let failures: u64 = tally.failed.values().sum();
    let by_step: Vec<String> = tally.failed.iter().map(|(step, n)| format!("{step}={n}")).collect();
    println!(
        "sessions={} opened={} failures={} elapsed_ms={:.1} rate={:.0}/s{}",
        args.count,
        tally.opened,
        failures,
        elapsed.as_secs_f64() * 1000.0,
        args.count as f64 / elapsed.as_secs_f64(),
        if by_step.is_empty() { String::new() } else { format!(" failed_at: {}", by_step.join(" ")) }
    );
    // With hostile input, libpam refusing some of it is part of the exercise.
    if failures > 0 && args.hostile.is_none() {
        std::process::exit(1);
    }
}

fn set_item_loop(pam: &Pam, a: &Strings, calls: u64) {
    let conv = PamConv { conv: no_conversation, appdata: std::ptr::null_mut() };
    let mut h: *mut c_void = std::ptr::null_mut();
    let rhost = a.rhost.clone().unwrap_or_else(|| CString::new("127.0.0.1").unwrap_or_default());
    // SAFETY: valid pointers; `h` is used only between a successful pam_start and pam_end.
    unsafe {
        if (pam.start)(a.service.as_ptr(), a.user.as_ptr(), &conv, &mut h) != 0 {
            eprintln!("pam-driver: pam_start failed");
            std::process::exit(1);
        }
        let begin = Instant::now();
        for _ in 0..calls {
            (pam.set_item)(h, PAM_RHOST, rhost.as_ptr().cast());
        }
        let elapsed = begin.elapsed();
        (pam.end)(h, 0);
        println!("calls={calls} ns_per_call={:.1}", elapsed.as_nanos() as f64 / calls.max(1) as f64);
    }
}

/// What one thread's sessions did.
#[derive(Default)]
struct Tally {
    opened: u64,
    stamps: Vec<(u64, u128, u128)>,
    failed: std::collections::BTreeMap<&'static str, u64>,
}

/// Calls libpam as fast as `threads` threads can until `length` has passed; prints the count.
fn flood(pam: &Pam, a: &Strings, mode: Flood, threads: u64, length: Duration) {
    let end = Instant::now() + length;
    let calls: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let conv = PamConv { conv: no_conversation, appdata: std::ptr::null_mut() };
                    let rhost = a.rhost.as_ref().map_or(std::ptr::null(), |r| r.as_ptr());
                    let mut calls = 0u64;
                    let mut h: *mut c_void = std::ptr::null_mut();
                    // SAFETY: every pointer is valid for the call; handles are used only after
                    // pam_start succeeded, and (for `start`) deliberately never ended.
                    unsafe {
                        if matches!(mode, Flood::SetItem)
                            && (pam.start)(a.service.as_ptr(), a.user.as_ptr(), &conv, &mut h) != 0
                        {
                            return 0;
                        }
                        while Instant::now() < end {
                            for _ in 0..64 {
                                match mode {
                                    Flood::SetItem => {
                                        (pam.set_item)(h, PAM_RHOST, rhost.cast());
                                    }
                                    Flood::Start => {
                                        let mut fresh: *mut c_void = std::ptr::null_mut();
                                        (pam.start)(a.service.as_ptr(), a.user.as_ptr(), &conv, &mut fresh);
                                    }
                                }
                            }
                            calls += 64;
                        }
                        if matches!(mode, Flood::SetItem) {
                            (pam.end)(h, 0);
                        }
                    }
                    calls
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    println!("calls={calls} seconds={:.1}", length.as_secs_f64());
}
