//! Reads of the engine's own tables: its key/value records and its log (Raft hard state,
//! snapshot and entries; PBFT signed messages), and the blocks block sync has staged.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{decode, EngineRecord, Store, StoreError, ENGINE_KV, ENGINE_LOG, SYNC_STAGING};
use crate::ledger::Block;

impl Store {
    /// All engine key/value records (PBFT restore, Raft hard state).
    pub fn engine_records(&self) -> Result<Vec<EngineRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENGINE_KV)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn engine_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENGINE_KV)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// The engine log in index order (Raft entries after the snapshot).
    pub fn engine_log(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENGINE_LOG)?;
        let mut out = Vec::with_capacity(t.len()? as usize);
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Lowest and highest staged height (block sync), if any block is staged.
    pub fn staged_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        // Data dirs from before block sync have no staging table: nothing staged.
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(SYNC_STAGING) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let lo = t.first()?.map(|(k, _)| k.value());
        let hi = t.last()?.map(|(k, _)| k.value());
        let range = lo.zip(hi);
        Ok(range)
    }

    /// Staged blocks `lo..=hi` (block sync), ascending; stops at the first missing height.
    pub fn staged_blocks(&self, lo: u64, hi: u64) -> Result<Vec<Block>, StoreError> {
        self.staged_blocks_limited(lo, hi, usize::MAX)
    }

    /// Like [`Store::staged_blocks`], stopping once `max_bytes` of encoded blocks are read
    /// (at least one block is returned if `lo` is staged).
    pub fn staged_blocks_limited(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> Result<Vec<Block>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SYNC_STAGING)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in t.range(lo..=hi)? {
            let (k, v) = item?;
            let h = k.value();
            if h != lo + out.len() as u64 || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes = bytes.saturating_add(v.value().len());
            out.push(decode(&format!("staged block {h}"), v.value())?);
        }
        Ok(out)
    }
}
