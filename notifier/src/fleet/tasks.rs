//! The fleet's background tasks: the connection monitor (which opens the bucket and keeps the
//! mirror's watch running), the watch itself, and the publisher (claims replayed first, then the
//! outbox's events at `replay_rate`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use futures_util::StreamExt as _;
use tracing::{error, info, warn};

use super::{claim::Ticket, keys::Claim, Notice, Shared};

/// What the client reports: refused credentials are said once, clearly.
pub(super) fn client_event(event: &async_nats::Event, refused: &AtomicBool, down_since: &Mutex<Option<Instant>>) {
    use async_nats::{ClientError, Event, ServerError};
    let refused_now = match event {
        Event::ServerError(ServerError::AuthorizationViolation) => true,
        // A connection attempt the server refused: the client retries, and says so each time.
        Event::ClientError(ClientError::Other(e)) => e.contains("authorization") || e.contains("authentication"),
        _ => false,
    };
    match event {
        _ if refused_now => {
            if !refused.swap(true, Ordering::Relaxed) {
                error!(
                    "The fleet server refused this host's credentials (authorization violation): check \
                     fleet.credentials, fleet.user/password or fleet.token. Verdicts and alerts go on from the local \
                     history; events and claims wait in the outbox."
                );
            }
        }
        Event::ServerError(e) => {
            // Each distinct error once: a refused publish is retried every second.
            static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
            let text = e.to_string();
            if let Ok(mut said) = SAID.lock() {
                if !said.contains(&text) && said.len() < 64 {
                    said.push(text);
                    warn!("The fleet server reports: {e}");
                }
            }
        }
        Event::Disconnected => {
            if let Ok(mut d) = down_since.lock() {
                d.get_or_insert_with(Instant::now);
            }
            warn!("Disconnected from the fleet servers; verdicts come from the local mirror until they are back.")
        }
        Event::Connected => {
            if let Ok(mut d) = down_since.lock() {
                *d = None;
            }
            refused.store(false, Ordering::Relaxed);
            info!("Connected to a fleet server.");
        }
        other => tracing::debug!("Fleet client: {other}"),
    }
}

/// Every 250 ms: the connection state, the unreachable health alert, the bucket and its watch.
pub(super) async fn monitor(s: Arc<Shared>) {
    let limit = Duration::from_secs(s.settings.unreachable_alert_secs);
    let mut alerted = false;
    let mut bucket_error = false;
    let mut watch: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let connected = s.connected();
        s.metrics.fleet.connected.set(i64::from(connected));

        if connected {
            if alerted {
                info!("The fleet servers are reachable again; replaying claims, then events.");
            }
            alerted = false;
            if s.kv().is_none() {
                match s.js.get_key_value(s.settings.bucket.clone()).await {
                    Ok(kv) => {
                        if let Ok(mut slot) = s.kv.lock() {
                            *slot = Some(kv);
                        }
                        bucket_error = false;
                        s.wake.notify_one();
                    }
                    Err(e) if !bucket_error => {
                        bucket_error = true;
                        error!(
                            bucket = %s.settings.bucket,
                            "Cannot open the fleet history bucket ({e}); create it with `notifier fleet init`. \
                             Verdicts come from the local history meanwhile."
                        );
                    }
                    Err(_) => {}
                }
            }
            if let (Some(kv), true) = (s.kv(), watch.as_ref().is_none_or(|w| w.is_finished())) {
                watch = Some(tokio::spawn(mirror(s.clone(), kv)));
            }
        } else {
            let down = s.down_for().unwrap_or_default();
            if !alerted && !limit.is_zero() && down >= limit {
                alerted = true;
                let pending = s.outbox.lock().map(|o| o.events).unwrap_or(0);
                let _ = s.notices.send(Notice::Health(format!(
                    "the fleet servers ({}) have been unreachable for {} s: verdicts come from the local mirror, \
                     alerts say that other hosts may alert too, and {pending} events and the claims wait in the outbox",
                    s.settings.servers.join(", "),
                    down.as_secs()
                )));
            }
        }
        // Quicker while the bucket is not open yet, so that a start is ready soon.
        let ready = connected && s.kv().is_some();
        tokio::time::sleep(Duration::from_millis(if ready { 250 } else { 50 })).await;
    }
}

/// Applies the bucket's changes to the mirror, from the revision after the saved one.
async fn mirror(s: Arc<Shared>, kv: kv::Store) {
    let from = s.mirror.lock().map(|m| m.revision).unwrap_or(0);
    let watch = if from == 0 { kv.watch_all().await } else { kv.watch_all_from_revision(from + 1).await };
    let mut watch = match watch {
        Ok(w) => w,
        Err(e) => {
            warn!("Cannot watch the fleet history ({e}); retrying.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    // Saved at most once a second (a write of the whole mirror per change would cost more than
    // the change), and a second after the last change.
    let mut saved = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
        let Ok(mut m) = s.mirror.lock() else { return };
        match next {
            Ok(Some(Ok(e))) => {
                let value = match e.operation {
                    Operation::Put => serde_json::from_slice::<Claim>(&e.value).ok(),
                    Operation::Delete | Operation::Purge => None,
                };
                if e.operation == Operation::Put && value.is_none() {
                    continue; // Not a value this notifier wrote.
                }
                m.apply(e.key, value, e.revision);
                let f = &s.metrics.fleet;
                f.mirror_keys.set(m.keys.len() as i64);
                f.mirror_revision.set(m.revision as i64);
                f.mirror_lag.set(e.delta as i64);
            }
            Ok(_) => break,
            Err(_) => {}
        }
        if m.dirty && saved.elapsed() >= Duration::from_secs(1) {
            if let Err(err) = m.save(&s.dir) {
                warn!("Cannot save the fleet mirror ({err}); it is rebuilt from the bucket after a restart.");
            }
            saved = Instant::now();
        }
    }
}

/// Claims first, then events, whenever woken (or every second).
pub(super) async fn publisher(s: Arc<Shared>) {
    let mut failing = false;
    let interval = Duration::from_secs_f64(1.0 / f64::from(s.settings.replay_rate.max(1)));
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(kv) = s.kv().filter(|_| s.connected()) else { continue };
        if !replay_claims(&s, &kv).await {
            continue;
        }
        loop {
            let Some((seq, events)) = s.outbox.lock().ok().and_then(|mut o| o.oldest_batch()) else { break };
            let mut acks = Vec::with_capacity(events.len());
            let mut sent = true;
            for e in &events {
                // A short burst is allowed; past it, events go at replay_rate.
                next = next.max(Instant::now() - Duration::from_secs(1)) + interval;
                tokio::time::sleep_until(next.into()).await;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", e.id.as_str());
                let payload = serde_json::to_vec(&e.payload).unwrap_or_default();
                match s.js.publish_with_headers(e.subject.clone(), headers, payload.into()).await {
                    Ok(ack) => acks.push(ack),
                    Err(_) => {
                        sent = false;
                        break;
                    }
                }
            }
            let mut acked = sent;
            for ack in acks {
                if let Err(e) = ack.await {
                    if !failing {
                        warn!("The fleet stream did not acknowledge an event ({e}); the outbox keeps it and retries. Is the stream created (`notifier fleet init`), and may this host publish to its subjects?");
                    }
                    acked = false;
                }
            }
            failing = !acked;
            if !acked {
                break;
            }
            if let Ok(mut o) = s.outbox.lock() {
                o.done_batch(seq);
                s.metrics.fleet.outbox_events.set(o.events as i64);
            }
            s.metrics.fleet.published.inc_by(events.len() as u64);
        }
    }
}

/// Replays the claim intents that the daemon's loop is not settling: the ones made offline, and
/// the ones a crash left. False when the server stopped answering.
async fn replay_claims(s: &Shared, kv: &kv::Store) -> bool {
    let intents = match s.outbox.lock() {
        Ok(o) => o.intents(),
        Err(_) => return false,
    };
    let limit = s.settings.claim_timeout();
    for (seq, intent) in intents {
        if s.inflight.lock().map(|f| f.contains(&seq)).unwrap_or(true) {
            continue;
        }
        let Some(ip_key) = intent.keys.last() else { continue };
        let value: bytes::Bytes = serde_json::to_vec(&intent.claim).unwrap_or_default().into();
        let lost_to = match tokio::time::timeout(limit, kv.create(ip_key, value.clone())).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                match tokio::time::timeout(limit, kv.get(ip_key.clone())).await {
                    Ok(Ok(Some(bytes))) => match serde_json::from_slice::<Claim>(&bytes) {
                        Ok(c) if c.first_event_id == intent.event_id => None,
                        Ok(c) => Some(c.first_host),
                        Err(_) => Some("another notifier".into()),
                    },
                    _ => return false,
                }
            }
            _ => return false,
        };
        let Some(winner) = lost_to else {
            s.metrics.fleet.claim("won");
            for key in &intent.keys[..intent.keys.len() - 1] {
                let _ = tokio::time::timeout(limit, kv.create(key, value.clone())).await;
            }
            if !intent.alerted && intent.alert.is_some() {
                if let Ok(mut f) = s.inflight.lock() {
                    f.insert(seq);
                }
                let _ = s.notices.send(Notice::Alert(Box::new(Ticket { seq: Some(seq), intent, offline: false })));
            } else if let Ok(mut o) = s.outbox.lock() {
                o.remove_intent(seq);
            }
            continue;
        };
        s.metrics.fleet.claim("lost");
        if intent.alerted {
            info!(
                host = %winner,
                "A claim made while the fleet was unreachable was lost to another host: both alerted on that login."
            );
        }
        if let Ok(mut o) = s.outbox.lock() {
            o.remove_intent(seq);
        }
    }
    true
}
