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

        fn leadership_changes(&self) -> u64 {
            self.inner.leadership_changes()
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

        fn take_dropped(&mut self) -> Vec<[u8; 32]> {
            self.inner.take_dropped()
        }

        fn transfer_leader(
            &mut self,
            to: crate::engine::NodeId,
        ) -> Result<(), crate::engine::TransferError> {
            self.inner.transfer_leader(to)
        }
    };
}

pub mod pbft;
pub mod raft;
