//! `notifier test-alert`: a sample alert through each sink, at once, with each result.

use crate::{
    alert,
    config::{sink::RawSink, Config},
    procinfo,
};

/// `notifier test-alert`: sends a sample alert through each sink (or one), directly, without the
/// spool or the rate limit, and reports each result. Returns false if any sink failed.
pub async fn test_alert(config: &Config, only: Option<&str>) -> anyhow::Result<bool> {
    let sinks: Vec<&RawSink> = config.sinks.iter().filter(|s| only.is_none_or(|n| s.name == n)).collect();
    if sinks.is_empty() {
        match only {
            Some(name) => anyhow::bail!("no sink named {name:?} in the config; see `notifier check-config`"),
            None => anyhow::bail!("no [[sink]] in the config: nothing to test"),
        }
    }
    let host = config.host.clone().unwrap_or_else(|| procinfo::host_context().host);
    let alert = alert::sample_alert(&host);
    let client = alert::dispatch::http_client()?;
    let mut all_ok = true;
    for raw in sinks {
        let kind = format!("{:?}", raw.kind).to_lowercase();
        let result = match alert::sink::Sink::build(raw, &client) {
            Err(e) => Err(format!("not usable: {e}")),
            Ok(s) => match tokio::time::timeout(std::time::Duration::from_secs(30), s.send(&alert)).await {
                Err(_) => Err("no answer within 30 s".to_string()),
                Ok(Ok(())) => Ok(()),
                Ok(Err(alert::sink::SinkError::Transient(e))) => {
                    Err(format!("{e} (temporary: the daemon would retry)"))
                }
                Ok(Err(alert::sink::SinkError::Permanent(e))) => {
                    Err(format!("{e} (permanent: check the sink's settings)"))
                }
                Ok(Err(e @ alert::sink::SinkError::Later { .. })) => {
                    Err(format!("{e} (temporary: the daemon would wait, then retry)"))
                }
                Ok(Err(alert::sink::SinkError::Exhausted(e))) => {
                    Err(format!("{e} (the daemon would not retry until the limit resets)"))
                }
            },
        };
        match result {
            Ok(()) => println!("sink {} ({kind}): ok", raw.name),
            Err(e) => {
                all_ok = false;
                println!("sink {} ({kind}): FAILED: {e}", raw.name);
            }
        }
    }
    Ok(all_ok)
}
