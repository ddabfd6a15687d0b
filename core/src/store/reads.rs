//! Reads of the ledger tables: the head and base, blocks, keys and balances (alone or with
//! the height they hold at), per-client seqs and results, and receipts.

use redb::{ReadableDatabase, ReadableTable};

use super::{
    client_seq_key, decode, Head, Store, StoreError, BALANCES, BLOCKS, CLIENT_SEQ, KV, META_BASE,
    META_GENESIS, META_HEAD, TX_RESULTS,
};
use crate::ledger::{Block, Genesis, TxRecord};

impl Store {
    pub fn head(&self) -> Result<Head, StoreError> {
        self.meta(META_HEAD)
    }

    /// The oldest state this store holds blocks after (genesis, or an installed snapshot).
    pub fn base(&self) -> Result<Head, StoreError> {
        self.meta(META_BASE)
    }

    pub fn genesis(&self) -> Result<Genesis, StoreError> {
        self.meta(META_GENESIS)
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BLOCKS)?;
        let out = match t.get(height)? {
            Some(v) => Some(decode(&format!("block {height}"), v.value())?),
            None => None,
        };
        Ok(out)
    }

    /// Raw stored bytes of a block (verify decodes them itself to report the height).
    pub fn block_bytes(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BLOCKS)?;
        Ok(t.get(height)?.map(|v| v.value().to_vec()))
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(KV)?;
        Ok(t.get(key)?.map(|v| v.value().to_string()))
    }

    /// A key's value and the height it is the value at, read in one transaction: a signed read
    /// reply vouches for exactly this pair, so a block applied in between must not mix them.
    pub fn get_with_height(&self, key: &str) -> Result<(Option<String>, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let head: Head = super::meta_in(&txn, META_HEAD)?;
        let t = txn.open_table(KV)?;
        Ok((t.get(key)?.map(|v| v.value().to_string()), head.height))
    }

    /// An account's balance and the height it is the balance at, read in one transaction (see
    /// [`Store::get_with_height`]).
    pub fn balance_with_height(&self, account: &str) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let head: Head = super::meta_in(&txn, META_HEAD)?;
        let t = txn.open_table(BALANCES)?;
        Ok((t.get(account)?.map(|v| v.value()).unwrap_or(0), head.height))
    }

    pub fn balance(&self, account: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BALANCES)?;
        Ok(t.get(account)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Sum of all balances (conservation checks).
    pub fn total_balance(&self) -> Result<u128, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BALANCES)?;
        let mut total = 0u128;
        for item in t.iter()? {
            total += u128::from(item?.1.value());
        }
        Ok(total)
    }

    pub fn last_seq(&self, client: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CLIENT_SEQ)?;
        Ok(t.get(client.as_slice())?.map(|v| v.value()))
    }

    /// The recorded result of `(client, seq)`, if that transaction was applied.
    /// The record of the applied transaction with this hash, if any (a receipt).
    pub fn receipt(&self, tx_hash: &[u8; 32]) -> Result<Option<TxRecord>, StoreError> {
        for height in self.with_receipts(|ix| ix.candidates(tx_hash))? {
            let Some(block) = self.block(height)? else {
                continue;
            };
            let Some(tx) = block.txs.iter().find(|t| &t.hash() == tx_hash) else {
                continue;
            };
            // The durable record says where this (client, seq) was applied; a duplicate in a
            // later block, or another hash sharing the prefix, does not match it.
            if let Some(rec) = self.tx_record(&tx.client, tx.seq)? {
                if &rec.tx_hash == tx_hash {
                    return Ok(Some(rec));
                }
            }
        }
        Ok(None)
    }

    pub fn tx_record(&self, client: &[u8; 32], seq: u64) -> Result<Option<TxRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TX_RESULTS)?;
        let out = match t.get(client_seq_key(client, seq).as_slice())? {
            Some(v) => Some(decode("tx record", v.value())?),
            None => None,
        };
        Ok(out)
    }

    /// Height of the lowest block this store holds (`None`: no block yet). 1 on a node with
    /// the whole chain.
    pub fn first_height(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BLOCKS)?;
        let first = t.first()?.map(|(k, _)| k.value());
        Ok(first)
    }
}
