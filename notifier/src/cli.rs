//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{config::Network, event::Format};

/// notifier: tells you, within seconds, that someone just logged in to this host.
///
/// It watches every PAM login (sshd, sudo, su, login, …) with eBPF uprobes on libpam, without any
/// change to /etc/pam.d or sshd_config, and without ever reading a password.
#[derive(Debug, Parser)]
#[command(name = "notifier", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every PAM login event to stdout, as text lines or JSON Lines.
    Watch(WatchArgs),
    /// The daemon: capture, enrich, classify and learn every login; write each with its verdict.
    Run(RunArgs),
    /// Validate a config file and print the effective settings.
    CheckConfig {
        /// Config file [default: /etc/notifier/notifier.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Send a sample alert through every sink (or one) and report each result.
    TestAlert {
        /// Config file [default: /etc/notifier/notifier.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only this sink.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
    /// Show and edit the learned history and the allowlist (safe while the daemon runs).
    Known(KnownArgs),
    /// Show the daemon: running or not, its probes, its last event, the spool, each sink's health.
    /// Exits 3 when it is not running.
    Status {
        /// Config file (for state_dir) [default: /etc/notifier/notifier.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the alerts waiting in the spool and the dead letters; send dead letters again.
    Spool(SpoolArgs),
    /// Fleet mode: set up the NATS JetStream stream and bucket, or watch every host's events.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print the man page or a shell completion script (for packaging); `man DIR` writes every
    /// page into DIR.
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        /// For `man`: write notifier.1 and a page per subcommand here.
        dir: Option<PathBuf>,
    },
}

/// What `notifier generate` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Generated {
    /// The man pages, notifier(1) and one per subcommand, in roff.
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print JSON Lines (one object per event) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only show events of this PAM service (repeatable).
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
    /// Attach to this libpam instead of searching for it (repeatable).
    #[arg(long = "libpam", value_name = "PATH")]
    pub libpam: Vec<PathBuf>,
    /// Watch this sshd, sshd-session or sshd-auth instead of searching for them (repeatable).
    #[arg(long = "sshd", value_name = "PATH", conflicts_with = "no_sshd")]
    pub sshd: Vec<PathBuf>,
    /// Watch PAM only: no sshd witness.
    #[arg(long)]
    pub no_sshd: bool,
}

impl WatchArgs {
    pub fn targets(&self) -> crate::loader::Targets {
        crate::loader::Targets { libpam: self.libpam.clone(), sshd: self.sshd.clone(), sshd_witness: !self.no_sshd }
    }

    pub fn format(&self) -> Format {
        format(self.json)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file [default: /etc/notifier/notifier.toml, or built-in defaults if it does not exist].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON Lines instead of text.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    pub fn format(&self) -> Format {
        format(self.json)
    }
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Create or update the events stream and the history bucket (idempotent), with the limits and
    /// replicas of the config's [fleet] table.
    Init {
        /// Config file [default: /etc/notifier/notifier.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Stream every host's events live, one line per event with its host.
    Watch(FleetWatchArgs),
}

#[derive(Debug, Args)]
pub struct FleetWatchArgs {
    /// Config file [default: /etc/notifier/notifier.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON Lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only this host's events.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Only this user's events.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Start this long ago (30s, 15m, 2h, 7d) instead of now.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// Config file (for state_dir and the sinks) [default: /etc/notifier/notifier.toml].
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: SpoolCommand,
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// List the alerts waiting for delivery, and those given up on (dead letters).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in their sink's spool and have the running daemon deliver them now
    /// (SIGUSR1); without a daemon, they go at its next start.
    Retry {
        /// The alert ids to send again (from `notifier spool list`).
        #[arg(value_name = "ID", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter (of --sink only, if given).
        #[arg(long)]
        all: bool,
        /// Only dead letters of this sink.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct KnownArgs {
    /// Config file (for state_dir and the configured allowlist).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The fleet's shared history (on NATS) instead of this host's.
    #[arg(long, global = true)]
    pub fleet: bool,
    #[command(subcommand)]
    pub command: KnownCommand,
}

#[derive(Debug, Subcommand)]
pub enum KnownCommand {
    /// Show the allowlists and what was learned for each user.
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Print the history as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Allowlist an IP or network, for everyone or for one user.
    Add {
        /// Only for this user.
        #[arg(long)]
        user: Option<String>,
        /// An IP address or CIDR network.
        network: Network,
    },
    /// Forget a user's history, or one IP, network, ASN (AS64500) or country (NZ) of it, or a
    /// command-line allowlist entry.
    Forget {
        /// The user; `--global` for the global allowlist.
        user: String,
        /// What to forget; everything about the user when absent.
        entry: Option<String>,
    },
}

/// `--json` or text.
fn format(json: bool) -> Format {
    if json {
        Format::Json
    } else {
        Format::Text
    }
}
