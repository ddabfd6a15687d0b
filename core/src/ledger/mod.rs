//! The one ordered ledger both protocols replicate (docs/ARCHITECTURE.md §3): signed client
//! transactions, grouped into hash-chained blocks, applied deterministically.

pub mod apply;
pub mod block;
pub mod genesis;
pub mod hexser;
pub mod tx;

pub use apply::{TxOutcome, TxRecord};
pub use block::{batch_digest, Block, Certificate, Hash};
pub use genesis::Genesis;
pub use tx::{Op, Tx, TxError};
