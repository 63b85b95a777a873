//! Durable state: the learned login history.
pub mod history;
