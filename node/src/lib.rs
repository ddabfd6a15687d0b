//! The faultline node.

/// `println!` for command output that tolerates a closed stdout (`faultline … | head`): the
/// line is dropped instead of panicking, so the command still finishes its work, cleans up its
/// children and returns its exit code.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod engine;
pub mod faults;
pub mod fuzzing;
pub mod keys;
pub mod ledger;
pub mod local;
pub mod metrics;
pub mod nemesis;
pub mod reply;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod testnet;
pub mod ui;
pub mod verify;
pub mod workload;
