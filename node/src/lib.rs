//! The faultline node.
pub mod cli;
pub mod config;
pub mod engine;
pub mod faults;
pub mod keys;
pub mod ledger;
pub mod sim;
pub mod store;
pub mod testnet;
pub mod verify;
