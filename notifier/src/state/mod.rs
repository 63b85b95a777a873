//! Durable state: the learned login history, and the alert spool's layout on disk.
pub mod history;
pub mod spool;
