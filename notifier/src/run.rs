//! `notifier run`: the daemon. It captures logins like `watch`, then enriches each one (GeoIP, ASN,
//! process ancestry, reverse DNS), classifies it against the allowlists and the learned history,
//! learns from it, alerts, and writes it with its verdict and reason to stdout. The stages and
//! their order are in [`crate::pipeline`].

use tracing::info;

use crate::{
    cli::RunArgs,
    config::Config,
    loader,
    pipeline::{Daemon, Pipeline},
    procinfo,
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Before the config, the databases and the sinks: see `loader::Early`.
    let early = loader::early();
    let config = Config::load_or_default(args.config.as_deref())?;
    let mut ctx = procinfo::host_context();
    if let Some(host) = &config.host {
        ctx.host.clone_from(host);
    }
    let daemon = Daemon::start(config, args.config.clone(), ctx.host.clone()).await?;
    let probes = match loader::load(&(&daemon.config.capture).into(), early) {
        Ok(p) => p,
        Err(e) => {
            daemon.start_failed(&e).await;
            return Err(e.into());
        }
    };
    daemon.started();
    info!(history = %daemon.judge.history_path().display(), "History loaded.");
    Pipeline::run(args.format(), daemon).run_until_stopped(probes, ctx).await
}
