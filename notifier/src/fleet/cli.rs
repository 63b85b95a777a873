//! `notifier fleet init`, `notifier fleet watch`, and `notifier known --fleet`.

use std::{
    collections::{HashSet, VecDeque},
    io::Write as _,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt as _;

use super::keys::{self, Claim, Fact};
use crate::{
    cli::{FleetWatchArgs, KnownArgs, KnownCommand},
    config::{fleet::Fleet as Settings, Config, ConfigError},
    event::escape_text,
};

/// The config's `[fleet]` table, or an error that says how to add one.
fn settings(path: Option<&Path>) -> anyhow::Result<(Config, Settings)> {
    let config = Config::load_or_default(path)?;
    let fleet = config.fleet.clone().ok_or_else(|| {
        ConfigError::Unusable("the config has no [fleet] table; add one with servers = [\"nats://HOST:4222\"]".into())
    })?;
    Ok((config, fleet))
}

async fn connect(s: &Settings, what: &str) -> anyhow::Result<jetstream::Context> {
    let client = super::connect_options(s, what).await?.connect(s.servers.clone()).await.map_err(|e| {
        let text = e.to_string();
        let servers = s.servers.join(", ");
        if super::tls_failure(&text) {
            anyhow::anyhow!("cannot connect to the fleet servers {servers}: {}", super::tls_hint(&text))
        } else {
            anyhow::anyhow!(
                "cannot connect to the fleet servers {servers} (are they up, and are the credentials right?): {text}"
            )
        }
    })?;
    Ok(jetstream::new(client))
}

/// Creates or updates the stream and the bucket: safe to run again, and after a config change.
pub async fn init(path: Option<&Path>) -> anyhow::Result<()> {
    let (config, s) = settings(path)?;
    let js = connect(&s, "notifier fleet init").await?;
    let subjects = format!("{}.events.>", s.subject_prefix);
    let max_age = Duration::from_secs(s.stream_max_age_days * 86_400);
    js.create_or_update_stream(stream::Config {
        name: s.stream.clone(),
        description: Some("notifier: every login event of every host".into()),
        subjects: vec![subjects.clone()],
        max_age,
        max_bytes: s.stream_max_bytes,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        // Replays after a reconnect are dropped by Nats-Msg-Id within this window.
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating or updating stream {}", s.stream))?;
    let history_age = Duration::from_secs(u64::from(config.policy.expire_days) * 86_400);
    js.create_or_update_key_value(kv::Config {
        bucket: s.bucket.clone(),
        description: "notifier: the fleet's learned login history".into(),
        history: 5,
        max_age: history_age,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating or updating bucket {}", s.bucket))?;
    println!(
        "stream {}: subjects {subjects}, max age {} d, max {} bytes, {} replica(s)",
        s.stream, s.stream_max_age_days, s.stream_max_bytes, s.replicas
    );
    println!(
        "bucket {}: history 5, max age {} d (policy.expire_days), {} replica(s)",
        s.bucket, config.policy.expire_days, s.replicas
    );
    Ok(())
}

/// `30s`, `15m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = n.parse().with_context(|| format!("{text:?} is not a duration; write e.g. 30s, 15m, 2h or 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{text:?}: unknown unit {unit:?}; write e.g. 30s, 15m, 2h or 7d"),
    };
    Ok(Duration::from_secs(secs))
}

/// Remembers the last ids seen, to drop replays that outlived the server's duplicate window.
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn first_time(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > 100_000 {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// One event as a text line: its host first.
fn text_line(v: &serde_json::Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(escape_text);
    let mut line = format!(
        "{} {} {}",
        s("host").unwrap_or_default(),
        s("time").unwrap_or_default(),
        s("event").unwrap_or_default()
    );
    for k in ["service", "user"] {
        if let Some(x) = s(k) {
            line.push_str(&format!(" {k}={x}"));
        }
    }
    if let Some(ip) = v.pointer("/peer/ip").and_then(|x| x.as_str()) {
        line.push_str(&format!(" ip={}", escape_text(ip)));
    }
    if let Some(x) = s("verdict") {
        line.push_str(&format!(" verdict={x}"));
        if v.get("alert").and_then(|a| a.as_bool()) == Some(true) {
            line.push_str(" alert=yes");
        }
    }
    if let Some(r) = s("reason") {
        line.push_str(&format!(" -- {r}"));
    }
    line
}

/// How long `fleet watch` waits for an event before it checks that its consumer is alive.
const IDLE_CHECK: Duration = Duration::from_secs(3);

/// Streams the fleet's events, live (or from `--since` ago), one line each, each event once. If
/// the consumer is lost (its server went away, the stream changed leader), a new one resumes
/// after the last event shown.
pub async fn watch(args: FleetWatchArgs) -> anyhow::Result<()> {
    let (_, s) = settings(args.config.as_deref())?;
    let js = connect(&s, "notifier fleet watch").await?;
    let host = args.host.as_deref().map_or_else(|| "*".to_string(), super::host_token);
    let mut policy = match &args.since {
        Some(d) => {
            let ago = parse_duration(d)?;
            consumer::DeliverPolicy::ByStartTime { start_time: time::OffsetDateTime::now_utc() - ago }
        }
        None => consumer::DeliverPolicy::New,
    };
    let mut seen = Seen { set: HashSet::new(), order: VecDeque::new() };
    let mut out = std::io::stdout().lock();
    let mut first = true;
    loop {
        let messages = async {
            let mut stream = js.get_stream(s.stream.clone()).await?;
            if matches!(policy, consumer::DeliverPolicy::New) {
                // From the next sequence, so that a restart of the consumer knows where it was.
                let next = stream.info().await?.state.last_sequence + 1;
                policy = consumer::DeliverPolicy::ByStartSequence { start_sequence: next };
            }
            let config = consumer::pull::OrderedConfig {
                filter_subject: format!("{}.events.{host}.>", s.subject_prefix),
                deliver_policy: policy,
                ..Default::default()
            };
            anyhow::Ok(stream.create_consumer(config).await?.messages().await?)
        };
        let mut messages = match messages.await {
            Ok(m) => m,
            Err(e) if first => {
                return Err(e.context(format!("reading stream {} (create it with `notifier fleet init`)", s.stream)))
            }
            Err(e) => {
                tracing::warn!("Reading the fleet stream: {e:#}; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if first {
            tracing::info!(stream = %s.stream, "Streaming login events.");
            first = false;
        }
        let mut errors = 0;
        loop {
            // A consumer whose server went away can fall silent without an error: when nothing
            // came for a while, and the stream holds what this watch has not shown, start anew.
            let m = match tokio::time::timeout(IDLE_CHECK, messages.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    let behind = match (&policy, js.get_stream(s.stream.clone()).await) {
                        (consumer::DeliverPolicy::ByStartSequence { start_sequence }, Ok(mut st)) => {
                            st.info().await.is_ok_and(|i| i.state.last_sequence >= *start_sequence)
                        }
                        _ => false,
                    };
                    if behind {
                        break;
                    }
                    continue;
                }
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("Reading the fleet stream: {e}");
                    errors += 1;
                    if errors >= 3 {
                        break;
                    }
                    continue;
                }
            };
            errors = 0;
            if let Ok(info) = m.info() {
                policy = consumer::DeliverPolicy::ByStartSequence { start_sequence: info.stream_sequence + 1 };
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else { continue };
            let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|x| x.as_str().to_string());
            if !seen.first_time(&id.unwrap_or_else(|| v["id"].as_str().unwrap_or_default().to_string())) {
                continue;
            }
            if args.user.as_deref().is_some_and(|u| v.get("user").and_then(|x| x.as_str()) != Some(u)) {
                continue;
            }
            let written = if args.json {
                serde_json::to_writer(&mut out, &v).map_err(std::io::Error::from).and_then(|()| writeln!(out))
            } else {
                writeln!(out, "{}", text_line(&v))
            };
            if written.and_then(|()| out.flush()).is_err() {
                return Ok(()); // stdout closed.
            }
        }
        tracing::info!("The fleet stream's consumer was lost; resuming after the last event shown.");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn fact_text(f: &Fact) -> String {
    match f {
        Fact::Seen => "user".into(),
        Fact::Country(cc) => format!("country {}", escape_text(cc)),
        Fact::Asn(n) => format!("AS{n}"),
        Fact::Network(net) => format!("network {net}"),
        Fact::Ip(ip) => format!("ip {ip}"),
    }
}

/// Whether `entry` (an IP, a network, AS64500, a country code) names `f`.
fn matches(f: &Fact, entry: &str) -> bool {
    match f {
        Fact::Seen => false,
        Fact::Country(cc) => cc.eq_ignore_ascii_case(entry),
        Fact::Asn(n) => entry.strip_prefix("AS").or(entry.strip_prefix("as")).is_some_and(|x| x == n.to_string()),
        Fact::Network(net) => net == entry,
        Fact::Ip(ip) => entry.parse::<std::net::IpAddr>().is_ok_and(|e| e == *ip),
    }
}

/// `notifier known list|forget --fleet`: the bucket's entries, with the host that saw each first.
pub async fn known(args: KnownArgs) -> anyhow::Result<()> {
    let (_, s) = settings(args.config.as_deref())?;
    let js = connect(&s, "notifier known --fleet").await?;
    let kv = js
        .get_key_value(s.bucket.clone())
        .await
        .with_context(|| format!("opening bucket {} (create it with `notifier fleet init`)", s.bucket))?;
    let mut entries: Vec<(String, Fact, String, Claim)> = Vec::new();
    let mut keys_stream = kv.keys().await.context("listing the bucket")?;
    while let Some(k) = keys_stream.next().await {
        let k = k.context("listing the bucket")?;
        let Some((user, fact)) = keys::parse(&k) else { continue };
        if let Some(value) = kv.get(k.clone()).await.context("reading the bucket")? {
            if let Ok(c) = serde_json::from_slice::<Claim>(&value) {
                entries.push((user, fact, k, c));
            }
        }
    }
    entries.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    match args.command {
        KnownCommand::List { user, json } => {
            entries.retain(|e| user.as_ref().is_none_or(|u| *u == e.0));
            let mut out = std::io::stdout().lock();
            if json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|(u, f, k, c)| serde_json::json!({"user": u, "entry": fact_text(f), "key": k, "first_host": c.first_host, "first_seen": c.first_seen, "hosts": c.hosts}))
                    .collect();
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                for (u, f, _, c) in &entries {
                    writeln!(
                        out,
                        "{} {}: first seen on {} at {} (hosts: {})",
                        escape_text(u),
                        fact_text(f),
                        escape_text(&c.first_host),
                        escape_text(&c.first_seen),
                        escape_text(&c.hosts.join(", "))
                    )?;
                }
            }
        }
        KnownCommand::Forget { user, entry } => {
            let mut n = 0;
            for (_, f, k, _) in entries.iter().filter(|e| e.0 == user) {
                if entry.as_deref().is_none_or(|x| matches(f, x)) {
                    kv.delete(k).await.with_context(|| format!("deleting {k}"))?;
                    n += 1;
                }
            }
            if n == 0 {
                bail!("nothing in the fleet history matched {user}; see `notifier known list --fleet`");
            }
            println!("forgot {n} fleet entr{}", if n == 1 { "y" } else { "ies" });
        }
        KnownCommand::Add { .. } => bail!("`known add` edits this host's allowlist; it has no --fleet form"),
    }
    Ok(())
}
