//! Reverse DNS of login peers: asynchronous, bounded by a timeout, cached (answers and failures
//! alike, so an unanswering server costs one timeout per address, not one per login), and sent only
//! to the configured servers, never through the system resolver.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    config::{NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
    TokioResolver,
};

use crate::config;

/// How long an answer (or the lack of one) is reused.
const CACHE_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Rdns {
    resolver: TokioResolver,
    timeout: Duration,
    cache: Arc<Mutex<Cache>>,
}

struct Cache {
    max: usize,
    entries: HashMap<IpAddr, (Option<String>, Instant)>,
}

impl Rdns {
    /// `None` when reverse DNS is off.
    pub fn new(cfg: &config::Rdns) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        let mut group = NameServerConfigGroup::new();
        for addr in &cfg.servers {
            group.push(NameServerConfig::new(*addr, Protocol::Udp));
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        opts.cache_size = cfg.cache_size;
        opts.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        )
        .with_options(opts)
        .build();
        let cache = Cache { max: cfg.cache_size.max(1), entries: HashMap::new() };
        Some(Self { resolver, timeout: cfg.timeout, cache: Arc::new(Mutex::new(cache)) })
    }

    /// The first PTR name of `ip` (without the trailing dot), or `None` on any failure or timeout.
    pub async fn lookup(&self, ip: IpAddr) -> Option<String> {
        if let Some(hit) = self.cached(ip) {
            return hit;
        }
        let answer = match tokio::time::timeout(self.timeout, self.resolver.reverse_lookup(ip)).await {
            Ok(Ok(names)) => names.iter().next().map(|n| n.to_utf8().trim_end_matches('.').to_string()),
            Ok(Err(e)) => {
                tracing::debug!(%ip, error = %e, "Reverse DNS failed.");
                None
            }
            Err(_) => {
                tracing::debug!(%ip, "Reverse DNS timed out.");
                None
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.entries.len() >= cache.max {
                cache.entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if cache.entries.len() >= cache.max {
                    cache.entries.clear();
                }
            }
            cache.entries.insert(ip, (answer.clone(), Instant::now()));
        }
        answer
    }

    fn cached(&self, ip: IpAddr) -> Option<Option<String>> {
        let cache = self.cache.lock().ok()?;
        let (name, at) = cache.entries.get(&ip)?;
        (at.elapsed() < CACHE_TTL).then(|| name.clone())
    }
}
