//! The faultline node: everything that touches tokio, the network, HTTP or processes — the
//! runtime around an engine, the API, the client, local clusters, bench, nemesis, the UI and
//! the CLI. The deterministic half (ledger, store, engines, faults, simulator, verify) lives in
//! `faultline-core` and is re-exported here under its module names (docs/ARCHITECTURE.md §1).

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
pub mod demo;
pub mod fuzzing;
pub mod handle;
pub mod local;
pub mod metrics;
pub mod nemesis;
pub mod runtime;
pub mod testnet;
pub mod ui;
pub mod workload;

pub use faultline_core::{
    api_types, client_protocol, config, engine, faults, keys, ledger, reply, setup, sim, store,
    verify,
};

#[cfg(test)]
mod tests {
    /// The deterministic crate derives peer ids and the message budget without the network
    /// crate; they must stay what the network checks on every connection and frame.
    #[test]
    fn core_and_net_agree_on_peer_ids_and_the_frame_limit() {
        for seed in 0..8u8 {
            let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes();
            let ours = crate::keys::peer_id(&public).map(|p| p.to_string());
            let net = faultline_net::peer_id_from_public(&public).map(|p| p.to_string());
            assert_eq!(ours.ok(), net.ok());
        }
        assert_eq!(
            crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            faultline_net::DEFAULT_MAX_FRAME_BYTES
        );
    }
}
