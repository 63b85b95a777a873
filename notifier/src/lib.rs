//! notifier's userspace. Data flows one way, and each module imports only what is upstream of it
//! or a leaf:
//!
//! kernel -> [`loader`] -> [`source`] -> [`capture`] -> [`enrich`] -> [`policy`] -> [`output`] and
//! [`alert`], and in fleet mode [`fleet`], driven by the one event loop in [`pipeline`]. The
//! commands: [`watch`], [`run`], [`known`], [`test_alert`], and `fleet` ([`fleet::cli`]). The leaves, which import no stage: [`clock`], [`id`], [`verdict`],
//! [`network`], [`peer`], [`authinfo`], [`procinfo`], [`config`] (settings only) and [`state`]
//! (durable files). A unit test (`module_graph.rs`) checks that no two modules import each other,
//! directly or not, and that the leaves import no stage.

pub mod alert;
pub mod authinfo;
pub mod btf;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod enrich;
pub mod event;
pub mod fleet;
pub mod generate;
pub mod id;
pub mod journal;
pub mod known;
pub mod loader;
pub mod metrics;
#[cfg(test)]
mod module_graph;
pub mod network;
pub mod output;
pub mod peer;
pub mod pipeline;
pub mod policy;
pub mod procinfo;
pub mod run;
pub mod service;
pub mod source;
pub mod spool;
pub mod state;
pub mod status;
pub mod test_alert;
pub mod verdict;
pub mod watch;
