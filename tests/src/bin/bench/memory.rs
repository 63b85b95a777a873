//! Cases: memory. The peak of a start with no GeoIP database, and the resident size of a daemon
//! with a City-shaped database of GeoLite2-City's size (57 MB) after 20 lookups.

use std::net::Ipv4Addr;

use super::*;

/// Resident kB of the mappings of `path` in `pid`.
fn resident_of(pid: u32, path: &Path) -> u64 {
    let (mut kb, mut inside) = (0, false);
    let want = path.to_string_lossy();
    for line in fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default().lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            inside = line.split_whitespace().nth(5) == Some(&*want);
        } else if inside && first == "Rss:" {
            kb += line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    kb
}

/// A City-shaped record: city and country, each with a geoname id and an English name.
fn city_record(i: u32) -> MmdbValue {
    use MmdbValue::*;
    let name: &'static str = Box::leak(format!("Town {i:07}").into_boxed_str());
    Map(vec![
        ("city", Map(vec![("geoname_id", U32(1_000_000 + i)), ("names", Map(vec![("en", Str(name))]))])),
        (
            "country",
            Map(vec![
                ("geoname_id", U32(2_186_224)),
                ("iso_code", Str("NZ")),
                ("names", Map(vec![("en", Str("New Zealand"))])),
            ]),
        ),
        (
            "subdivisions",
            Array(vec![Map(vec![("iso_code", Str("AUK")), ("names", Map(vec![("en", Str("Auckland"))]))])]),
        ),
    ])
}

/// The /24 networks of the database: `NETWORKS` of them from 1.0.0.0, consecutive.
const NETWORKS: u32 = 357_000;

fn network_ip(i: u32, host: u8) -> Ipv4Addr {
    Ipv4Addr::from(0x0100_0000 + (i << 8) + u32::from(host))
}

pub(crate) fn memory(report: &mut Report, runs: usize) {
    // Peak memory of a start with no database: the most the process ever held (VmHWM).
    let d = DaemonLab::new(|_| String::new());
    let mut peaks = Vec::new();
    for _ in 0..runs {
        let n = Notifier::run(&d.config);
        peaks.push(status_field(n.pid(), "VmHWM:") as f64 / 1024.0);
    }
    let m = median(&peaks);
    report.row(
        "footprint",
        format!("peak RSS of a start, notifier run, no GeoIP database ({runs} runs)"),
        format!("{m:.1} MB median (spread {})", spread(&peaks)),
        "≤ 20 MB",
        met(m <= 20.0),
    );
    if m > 20.0 {
        report.notes.push(format!(
            "Peak at start-up: {m:.1} MB against 20 MB. Before notifier made aya's loader without \
             letting it read the kernel's BTF (`loader/quiet.rs`), that parse alone took the peak to \
             29 MB: check that the seccomp filter there still installs (a `debug` log says when not)."
        ));
    }

    let lab = Lab::new();
    let db = lab.path("city.mmdb");
    let cidrs: Vec<String> = (0..NETWORKS).map(|i| format!("{}/24", network_ip(i, 0))).collect();
    let networks: Vec<(&str, MmdbValue)> = cidrs.iter().zip(0..).map(|(c, i)| (c.as_str(), city_record(i))).collect();
    write_mmdb(&db, "GeoLite2-City", &networks);
    drop(networks);
    // As a database written some time ago: not in the page cache (just written, it would be there
    // in large folios, each mapped whole at its first touch).
    let file = fs::File::open(&db).expect("the database");
    file.sync_all().expect("fsync");
    // SAFETY: posix_fadvise on an open descriptor; it only drops clean cached pages.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let size_mb = fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let service = PamService::permit("ntbgeo");
    let libpam = private_libpam(&lab);
    let d = DaemonLab::new(|_| {
        format!("[capture]\nlibpam = [\"{}\"]\n[geoip]\ncountry_db = \"{}\"\n", libpam.display(), db.display())
    });
    let n = Notifier::run(&d.config);
    let lookups = 20;
    for k in 0..lookups {
        let ip = network_ip(k * (NETWORKS / lookups) + 7, 9).to_string();
        drive(Some(&lab.dir), &service.name, &["--rhost", &ip]);
    }
    let events = n.json_until(Duration::from_secs(30), |e| {
        e.iter().filter(|e| e["event"] == "session_open" && e["service"] == service.name.as_str()).count()
            >= lookups as usize
    });
    let cities = events.iter().filter(|e| e["event"] == "session_open" && e["geo"]["city"].is_string()).count();
    assert_eq!(cities, lookups as usize, "every login got its city from the database: {events:?}");
    let rss = status_field(n.pid(), "VmRSS:") as f64 / 1024.0;
    let db_resident = resident_of(n.pid(), &db) as f64 / 1024.0;
    report.row(
        "footprint",
        format!("RSS of notifier run, {size_mb:.0} MB City-shaped database (not cached), after {lookups} lookups"),
        format!("{rss:.1} MB, of which {db_resident:.2} MB the database's pages (clean, shared)"),
        "≤ 16 MB",
        met(rss <= 16.0),
    );
}
