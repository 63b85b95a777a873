//! `notifier watch`: load the probes, then stream every login event to stdout until SIGINT or
//! SIGTERM: the pipeline of [`crate::pipeline`] without enrich, policy or alerts. Records lost in
//! the kernel or in the capture tables are reported as `events_lost` events, so a loss is never
//! silent.

use crate::{cli::WatchArgs, loader, pipeline::Pipeline, procinfo};

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let early = loader::early();
    let probes = loader::load(&args.targets(), early)?;
    Pipeline::watch(args.format(), args.services).run_until_stopped(probes, procinfo::host_context()).await
}
