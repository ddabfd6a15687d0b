//! The write path: one driver step committed in one fsynced write transaction — engine
//! state, block-sync staging, then the new blocks applied to the ledger tables in order.

use redb::{Durability, ReadableTable, WriteTransaction};

use super::{
    client_seq_key, decode, encode, AppliedBlock, EngineOp, Head, NewBlock, Store, StoreError,
    WriteBatch, BALANCES, BLOCKS, CLIENT_SEQ, ENGINE_KV, ENGINE_LOG, KV, META, META_HEAD,
    SYNC_STAGING, TX_RESULTS,
};
use crate::ledger::apply::{apply_tx, Applied, StateAccess};
use crate::ledger::{Block, Hash, Tx, TxRecord};

/// The ledger tables of one write transaction, opened once per commit (opening a redb table
/// per read or write would cost more than the write itself).
struct LedgerTables<'t> {
    kv: redb::Table<'t, &'static str, &'static str>,
    balances: redb::Table<'t, &'static str, u64>,
    client_seq: redb::Table<'t, &'static [u8], u64>,
    tx_results: redb::Table<'t, &'static [u8], &'static [u8]>,
    blocks: redb::Table<'t, u64, &'static [u8]>,
}

impl<'t> LedgerTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(LedgerTables {
            kv: txn.open_table(KV)?,
            balances: txn.open_table(BALANCES)?,
            client_seq: txn.open_table(CLIENT_SEQ)?,
            tx_results: txn.open_table(TX_RESULTS)?,
            blocks: txn.open_table(BLOCKS)?,
        })
    }
}

impl StateAccess for LedgerTables<'_> {
    type Error = StoreError;
    fn balance(&mut self, account: &str) -> Result<u64, StoreError> {
        let v = self.balances.get(account)?.map(|v| v.value()).unwrap_or(0);
        Ok(v)
    }
    fn set_balance(&mut self, account: &str, amount: u64) -> Result<(), StoreError> {
        self.balances.insert(account, amount)?;
        Ok(())
    }
    fn put(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.kv.insert(key, value)?;
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key)?;
        Ok(())
    }
    fn last_seq(&mut self, client: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let v = self.client_seq.get(client.as_slice())?.map(|v| v.value());
        Ok(v)
    }
    fn set_last_seq(&mut self, client: &[u8; 32], seq: u64) -> Result<(), StoreError> {
        self.client_seq.insert(client.as_slice(), seq)?;
        Ok(())
    }
}

impl Store {
    /// Commits one driver step atomically with an fsync: engine state, an optional snapshot
    /// install, then the new blocks applied in order. Returns the appended blocks with outcomes.
    pub fn commit(&self, batch: WriteBatch) -> Result<Vec<AppliedBlock>, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let applied = Self::write_all(&txn, batch)?;
        txn.commit()?;
        // After the commit: the index never names a block the disk does not hold.
        let mut ix = self.receipts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = ix.as_mut() {
            for ab in &applied {
                for h in &ab.tx_hashes {
                    ix.insert(h, ab.block.height);
                }
            }
        }
        Ok(applied)
    }

    fn write_all(
        txn: &WriteTransaction,
        batch: WriteBatch,
    ) -> Result<Vec<AppliedBlock>, StoreError> {
        if !batch.engine.is_empty() {
            let mut kv = txn.open_table(ENGINE_KV)?;
            let mut log = txn.open_table(ENGINE_LOG)?;
            for op in batch.engine {
                match op {
                    EngineOp::Put { key, value } => {
                        kv.insert(key.as_slice(), value.as_slice())?;
                    }
                    EngineOp::Delete { key } => {
                        kv.remove(key.as_slice())?;
                    }
                    EngineOp::LogTruncateFrom { from } => {
                        log.retain_in(from.., |_, _| false)?;
                    }
                    EngineOp::LogPut { index, value } => {
                        log.insert(index, value.as_slice())?;
                    }
                    EngineOp::LogCompactTo { upto } => {
                        log.retain_in(..=upto, |_, _| false)?;
                    }
                }
            }
        }
        if batch.clear_staging || !batch.stage.is_empty() || !batch.synced.is_empty() {
            let mut staging = txn.open_table(SYNC_STAGING)?;
            if batch.clear_staging {
                staging.retain(|_, _| false)?;
            }
            for b in &batch.stage {
                staging.insert(b.height, encode(b).as_slice())?;
            }
            for b in &batch.synced {
                staging.remove(b.height)?;
            }
        }
        let mut applied = Vec::with_capacity(batch.synced.len() + batch.blocks.len());
        if batch.blocks.is_empty() && batch.synced.is_empty() {
            return Ok(applied);
        }
        let mut head: Head = {
            let meta = txn.open_table(META)?;
            let v = meta
                .get(META_HEAD)?
                .ok_or_else(|| StoreError::Corrupt("missing head".into()))?;
            decode("head", v.value())?
        };
        let mut tables = LedgerTables::open(txn)?;
        let synced = batch.synced.into_iter().map(|b| {
            let hash = b.hash;
            (
                NewBlock {
                    txs: b.txs,
                    certificate: b.certificate,
                },
                Some((b.height, hash)),
            )
        });
        let fresh = batch.blocks.into_iter().map(|nb| (nb, None));
        for (nb, expected) in synced.chain(fresh) {
            // Each tx hash is computed once: for the block hash, the records and the waiters.
            let tx_hashes: Vec<Hash> = nb.txs.iter().map(Tx::hash).collect();
            let block = Block::with_tx_hashes(
                head.height + 1,
                head.hash,
                nb.txs,
                nb.certificate,
                &tx_hashes,
            );
            if let Some((height, hash)) = expected {
                // A synced block was verified against the chain when staged; rebuilt on our
                // head it must come out identical, or our chain and the leader's differ.
                if height != block.height || hash != block.hash {
                    return Err(StoreError::Corrupt(format!(
                        "synced block {height} does not extend the local chain at height {}",
                        head.height
                    )));
                }
            }
            let mut outcomes = Vec::with_capacity(block.txs.len());
            for (tx, tx_hash) in block.txs.iter().zip(&tx_hashes) {
                let outcome = match apply_tx(&mut tables, tx)? {
                    Applied::Applied(o) => Some(o),
                    Applied::Duplicate | Applied::ReadMarker => None,
                };
                if let Some(o) = &outcome {
                    let rec = TxRecord {
                        height: block.height,
                        tx_hash: *tx_hash,
                        outcome: o.clone(),
                    };
                    let key = client_seq_key(&tx.client, tx.seq);
                    tables
                        .tx_results
                        .insert(key.as_slice(), encode(&rec).as_slice())?;
                }
                outcomes.push(outcome);
            }
            tables
                .blocks
                .insert(block.height, encode(&block).as_slice())?;
            head = Head {
                height: block.height,
                hash: block.hash,
            };
            applied.push(AppliedBlock {
                block,
                outcomes,
                tx_hashes,
            });
        }
        drop(tables);
        txn.open_table(META)?
            .insert(META_HEAD, encode(&head).as_slice())?;
        Ok(applied)
    }
}
