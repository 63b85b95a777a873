//! notifier's userspace: the loader, the kernel event source, session assembly and output.
//! Data flows one way: kernel -> `source` -> `session` -> `event` (stdout).

pub mod authinfo;
pub mod btf;
pub mod cli;
pub mod event;
pub mod loader;
pub mod peer;
pub mod procinfo;
pub mod session;
pub mod source;
pub mod watch;
