//! The genesis state: initial account balances from cluster.toml, and the hash every chain
//! starts from (the `prev_hash` of block 1), so clusters with different genesis never agree by
//! accident.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::block::Hash;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Account name -> initial balance.
    #[serde(default)]
    pub balances: BTreeMap<String, u64>,
}

impl Genesis {
    /// SHA-256 over the sorted balances: the head hash at height 0.
    pub fn hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(b"faultline-genesis-v1");
        h.update((self.balances.len() as u64).to_be_bytes());
        for (account, amount) in &self.balances {
            h.update((account.len() as u64).to_be_bytes());
            h.update(account.as_bytes());
            h.update(amount.to_be_bytes());
        }
        h.finalize().into()
    }

    pub fn total(&self) -> u128 {
        self.balances.values().map(|v| u128::from(*v)).sum()
    }
}
