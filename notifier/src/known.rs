//! `notifier known list|add|forget`: show and edit the learned history and the command-line
//! allowlist. Every edit goes through the history lock, so it is safe while the daemon runs and
//! neither side loses the other's updates.

use std::{io::Write as _, path::PathBuf};

use anyhow::{bail, Context as _};

use crate::{
    cli::{KnownArgs, KnownCommand},
    clock::{format_unix_secs, unix_now},
    config::{Config, Network},
    state::history::{History, Store},
};

pub fn run(args: KnownArgs) -> anyhow::Result<()> {
    let config = Config::load_or_default(args.config.as_deref())?;
    let mut store = Store::open(&config.state_dir, unix_now())?;
    match args.command {
        KnownCommand::List { user, json } => {
            let mut history = store.history.clone();
            if let Some(user) = &user {
                history.users.retain(|u, _| u == user);
            }
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &history)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", list_text(&config, &history))?;
            }
        }
        KnownCommand::Add { user, network } => {
            store.update(|h| {
                let list = match &user {
                    Some(u) => h.allow.users.entry(u.clone()).or_default(),
                    None => &mut h.allow.global,
                };
                if !list.contains(&network) {
                    list.push(network);
                }
            })?;
            println!("allowlisted {network} for {}", user.as_deref().unwrap_or("everyone"));
        }
        KnownCommand::Forget { user, entry } => {
            let removed = store.update(|h| forget(h, &user, entry.as_deref()))?;
            if removed == 0 {
                bail!(
                    "nothing matched {user}{}; see `notifier known list`",
                    entry.map(|e| format!(" {e}")).unwrap_or_default()
                );
            }
            println!("forgot {removed} entr{}", if removed == 1 { "y" } else { "ies" });
        }
    }
    Ok(())
}

/// Removes what matches; returns how many entries.
pub fn forget(h: &mut History, user: &str, entry: Option<&str>) -> usize {
    let allow_matches = |n: &Network| entry.is_some_and(|e| e.parse::<Network>().is_ok_and(|e| e == *n));
    if user == "--global" {
        let before = h.allow.global.len();
        h.allow.global.retain(|n| !allow_matches(n));
        return before - h.allow.global.len();
    }
    let mut removed = 0;
    match entry {
        None => {
            removed += usize::from(h.users.remove(user).is_some());
            removed += h.allow.users.remove(user).map_or(0, |v| v.len());
        }
        Some(e) => {
            if let Some(u) = h.users.get_mut(user) {
                let key = e.parse::<Network>().map(|n| {
                    // An address is stored as an IP, a network as a CIDR.
                    if n.0.prefix_len() == n.0.max_prefix_len() {
                        n.0.addr().to_string()
                    } else {
                        n.to_string()
                    }
                });
                let key = key.unwrap_or_else(|_| e.to_string());
                for map in [&mut u.ips, &mut u.networks, &mut u.asns, &mut u.countries] {
                    removed += usize::from(map.remove(&key).is_some());
                }
            }
            if let Some(list) = h.allow.users.get_mut(user) {
                let before = list.len();
                list.retain(|n| !allow_matches(n));
                removed += before - list.len();
            }
        }
    }
    removed
}

fn list_text(config: &Config, h: &History) -> String {
    let mut s = String::new();
    let nets = |v: &[Network]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    s.push_str(&format!("allowlist (config): {}\n", nets(&config.policy.known_networks)));
    s.push_str(&format!("allowlist (known add): {}\n", nets(&h.allow.global)));
    for (user, list) in &h.allow.users {
        s.push_str(&format!("allowlist for {user}: {}\n", nets(list)));
    }
    for (user, u) in &h.users {
        s.push_str(&format!("user {user}\n"));
        for (kind, map) in [("ip", &u.ips), ("network", &u.networks), ("asn", &u.asns), ("country", &u.countries)] {
            for (key, seen) in map {
                s.push_str(&format!(
                    "  {kind:<8} {key:<40} count={:<6} first={} last={}\n",
                    seen.count,
                    format_unix_secs(seen.first),
                    format_unix_secs(seen.last),
                ));
            }
        }
    }
    s
}

/// `notifier check-config`: validate a file and print the effective settings.
pub fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = path.unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    let (config, effective) = Config::load_with_sources(&path)?;
    crate::enrich::geo::GeoDb::open(&config.geoip).context("opening the GeoIP databases")?;
    let sample = crate::alert::sample_alert(config.host.as_deref().unwrap_or("web-1"));
    for sink in &config.sinks {
        let templates = crate::alert::message::Templates { title: sink.title.clone(), body: sink.body.clone() };
        templates.check(&sample).map_err(|e| {
            crate::config::ConfigError::Unusable(format!("{}: sink {:?}: {e}", path.display(), sink.name))
        })?;
    }
    println!("# {}: valid. Effective settings, each with the file that set it:", path.display());
    for d in &effective.dropins {
        println!("# drop-in: {}", d.display());
    }
    print!("{}", effective.annotated());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::history::Sighting;

    #[test]
    fn forget_entries() {
        let mut h = History::default();
        h.record(
            &Sighting { user: "alice", ip: "203.0.113.7".parse().unwrap(), asn: Some(64500), country: Some("NZ") },
            1,
        );
        h.allow.users.insert("alice".into(), vec!["10.0.0.0/8".parse().unwrap()]);
        h.allow.global.push("172.16.0.0/12".parse().unwrap());
        assert_eq!(forget(&mut h, "alice", Some("203.0.113.7")), 1);
        assert_eq!(forget(&mut h, "alice", Some("203.0.113.0/24")), 1);
        assert_eq!(forget(&mut h, "alice", Some("AS64500")), 1);
        assert_eq!(forget(&mut h, "alice", Some("10.0.0.0/8")), 1);
        assert_eq!(forget(&mut h, "--global", Some("172.16.0.0/12")), 1);
        assert_eq!(forget(&mut h, "alice", None), 1);
        assert_eq!(forget(&mut h, "alice", None), 0);
        assert!(h.users.is_empty() && h.allow.global.is_empty());
    }
}
