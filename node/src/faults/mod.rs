//! Byzantine behaviours (docs/SPEC.md "Byzantine modes"): real misbehaviours of the protocol at
//! hand, plugged into any node slot of the simulator or a real node.

/// The `Engine` methods a Byzantine wrapper passes straight to the honest engine in its
/// `inner` field: its misbehaviour lives in what it receives, sends and persists, not here.
macro_rules! passthrough_engine_methods {
    () => {
        fn applied(
            &mut self,
            blocks: &[crate::store::AppliedBlock],
            store: &crate::store::Store,
        ) -> Result<(), crate::engine::EngineError> {
            self.inner.applied(blocks, store)
        }

        fn status(&self) -> crate::engine::EngineStatus {
            self.inner.status()
        }

        fn leader_changes(&self) -> u64 {
            self.inner.leader_changes()
        }

        fn message_kind(&self, bytes: &[u8]) -> &'static str {
            self.inner.message_kind(bytes)
        }

        fn read_index(&mut self, ctx: u64) -> Result<bool, crate::engine::ProposeError> {
            self.inner.read_index(ctx)
        }

        fn ready_reads(&mut self) -> Vec<u64> {
            self.inner.ready_reads()
        }

        fn block_sync(&self) -> Option<(u64, u64)> {
            self.inner.block_sync()
        }
    };
}

pub mod pbft;
pub mod raft;

use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ByzantineMode {
    /// Receives everything, sends nothing (omission).
    Silent,
    /// As leader/primary sends conflicting proposals for one slot; as voter votes for everything.
    Equivocate,
    /// Sends messages with invalid signatures or claiming another sender.
    Forge,
    /// Sends tampered payloads: wrong digests, altered transactions, lies about its log.
    Corrupt,
    /// Acknowledges entries/phases without persisting or checking them.
    AckWithoutStore,
    /// Inflates term/view numbers to force elections or view changes.
    Disrupt,
}

impl ByzantineMode {
    pub const ALL: [ByzantineMode; 6] = [
        ByzantineMode::Silent,
        ByzantineMode::Equivocate,
        ByzantineMode::Forge,
        ByzantineMode::Corrupt,
        ByzantineMode::AckWithoutStore,
        ByzantineMode::Disrupt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ByzantineMode::Silent => "silent",
            ByzantineMode::Equivocate => "equivocate",
            ByzantineMode::Forge => "forge",
            ByzantineMode::Corrupt => "corrupt",
            ByzantineMode::AckWithoutStore => "ack-without-store",
            ByzantineMode::Disrupt => "disrupt",
        }
    }
}

impl std::fmt::Display for ByzantineMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `I=MODE` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByzantineSpec {
    pub node: u64,
    pub mode: ByzantineMode,
}

impl std::str::FromStr for ByzantineSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, m) = s
            .split_once('=')
            .ok_or_else(|| format!("expected I=MODE (e.g. 0=equivocate), got {s:?}"))?;
        let node = i
            .trim()
            .parse()
            .map_err(|_| format!("node index {i:?} is not a number"))?;
        let mode = <ByzantineMode as clap::ValueEnum>::from_str(m.trim(), true).map_err(|_| {
            let names: Vec<_> = ByzantineMode::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mode {m:?}; one of: {}", names.join(", "))
        })?;
        Ok(ByzantineSpec { node, mode })
    }
}
