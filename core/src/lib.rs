//! The deterministic half of a faultline node (docs/ARCHITECTURE.md §1).
//!
//! Everything here runs without tokio, sockets or wall-clock time driving it: the ledger and its
//! transactions, the redb store, the two engines that wrap the sans-IO protocol cores
//! (`faultline-raft`, `faultline-bft`) around the ledger, the Byzantine fault wrappers, the
//! simulator that runs those engines on a simulated network, clock and disk, and `verify`. The
//! `faultline-node` crate adds the runtime, network, HTTP API and CLI on top, so whatever the
//! simulator proves is the code the real node runs.

pub mod api_types;
pub mod client_protocol;
pub mod config;
pub mod engine;
pub mod faults;
pub mod keys;
pub mod ledger;
pub mod reply;
pub mod setup;
pub mod sim;
pub mod store;
pub mod verify;
