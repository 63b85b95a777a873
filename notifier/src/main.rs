//! The `notifier` binary: parse the command line, set up logging, run, and map errors to an exit
//! code.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use notifier::cli::{Cli, Command, FleetCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What a command that did not fail exits with.
    let mut success = ExitCode::SUCCESS;
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => notifier::watch::run(args).await,
            Command::Run(args) => notifier::run::run(args).await,
            Command::CheckConfig { config } => notifier::known::check_config(config),
            Command::Status { config, json } => {
                if !notifier::status::run(config.as_deref(), json)? {
                    success = ExitCode::from(NOT_RUNNING);
                }
                Ok(())
            }
            Command::Spool(args) => notifier::spool::run(args),
            Command::Known(args) if args.fleet => notifier::fleet::cli::known(args).await,
            Command::Known(args) => notifier::known::run(args),
            Command::Fleet { command: FleetCommand::Init { config } } => {
                notifier::fleet::cli::init(config.as_deref()).await
            }
            Command::Fleet { command: FleetCommand::Watch(args) } => notifier::fleet::cli::watch(args).await,
            Command::Generate { what: notifier::cli::Generated::Man, dir: Some(dir) } => {
                let pages =
                    notifier::generate::write_all(&dir).with_context(|| format!("writing to {}", dir.display()))?;
                println!("{}", pages.join("\n"));
                Ok(())
            }
            Command::Generate { what, .. } => {
                // A reader that stops early (`| head`) ends the output; that is not an error.
                match notifier::generate::generate(what, &mut std::io::stdout().lock()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    written => written.context("writing to stdout"),
                }
            }
            Command::TestAlert { config, sink } => {
                let config = notifier::config::Config::load_or_default(config.as_deref())?;
                if notifier::test_alert::test_alert(&config, sink.as_deref()).await? {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("some sinks failed; see above"))
                }
            }
        }
    });
    match result {
        Ok(()) => success,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// `notifier status` when the daemon is not running (as `systemctl status` and LSB init scripts).
const NOT_RUNNING: u8 = 3;

/// The exit status for an error, by the sysexits convention, so that systemd can tell what a
/// restart cannot fix (the unit's `RestartPreventExitStatus=`): 78 for a config error, 77 for
/// missing privileges, 69 when the system lacks what notifier needs (uprobes, libpam), 1 otherwise.
fn exit_status(e: &anyhow::Error) -> u8 {
    use notifier::{config::ConfigError, loader::LoadError};
    for cause in e.chain() {
        if cause.is::<ConfigError>() {
            return 78;
        }
        if let Some(load) = cause.downcast_ref::<LoadError>() {
            return match load {
                LoadError::NotPrivileged { .. } => 77,
                LoadError::BadLibpam { .. } | LoadError::BadSshd { .. } => 78,
                LoadError::NoUprobes | LoadError::LibpamNotFound { .. } => 69,
                _ => 1,
            };
        }
    }
    1
}

/// Logs go to stderr (stdout carries only events). Under systemd (JOURNAL_STREAM set) journald adds
/// its own timestamps, so lines are plain, without time or colour. `RUST_LOG` filters, default info
/// (the NATS client's own logs off: the fleet module reports what matters once, in its words).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=off"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format().without_time().with_ansi(false).with_target(false);
        builder.event_format(notifier::journal::Priority(format)).init();
    } else {
        use std::io::IsTerminal as _;
        builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).init();
    }
}
