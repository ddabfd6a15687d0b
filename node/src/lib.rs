//! The faultline node.
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod faults;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod reply;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod testnet;
pub mod verify;
