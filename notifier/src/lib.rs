//! notifier's userspace: the loader, the kernel event source, session assembly and output.
//! Data flows one way: kernel -> `source` -> `session` (PAM) and `witness` (sshd, and the merge of
//! both) -> `enrich` -> `policy` -> stdout.

pub mod alert;
pub mod authinfo;
pub mod btf;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod event;
pub mod known;
pub mod loader;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod procinfo;
pub mod run;
pub mod service;
pub mod session;
pub mod source;
pub mod state;
pub mod watch;
pub mod witness;
