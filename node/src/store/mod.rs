//! Durable state of one node in one embedded redb database (the data dir's only file): the
//! ledger (blocks, KV, balances, per-client seqs and results) and the consensus engine's own
//! state. Everything one driver step produces commits in ONE write transaction with an fsync
//! (group commit), so a block and its state changes — and the votes/log entries that go with
//! them — are durable together or not at all.

pub mod crash_backend;
mod receipts;

use std::path::Path;
use std::sync::RwLock;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::ledger::apply::{apply_tx, Applied, StateAccess};
use crate::ledger::{Block, Certificate, Genesis, Hash, Tx, TxOutcome, TxRecord};

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
const BALANCES: TableDefinition<&str, u64> = TableDefinition::new("balances");
const CLIENT_SEQ: TableDefinition<&[u8], u64> = TableDefinition::new("client_seq");
const TX_RESULTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tx_results");
const ENGINE_KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("engine_kv");
const ENGINE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("engine_log");
/// Blocks fetched by block sync and verified, not yet applied (height -> encoded block).
const SYNC_STAGING: TableDefinition<u64, &[u8]> = TableDefinition::new("sync_staging");

const META_HEAD: &str = "head";
const META_BASE: &str = "base";
const META_GENESIS: &str = "genesis";

/// Name of the database file inside a data dir.
pub const DB_FILE: &str = "faultline.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Kept as text, not as a source: redb's errors already print their cause, and a chained
    /// source would repeat it in the one-line message users see.
    #[error("database error: {0}")]
    Db(String),
    #[error("no database at {0} (is this a node's data dir?)")]
    NotFound(String),
    #[error("cannot create data dir {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable database ({why}); refusing to start, because a fresh one would \
         forget this node's votes and signed messages: restore the file from a backup, or \
         remove the data dir to rejoin as a new node"
    )]
    Unusable { path: String, why: String },
    #[error(
        "data dir {0} is not empty but holds no {DB_FILE}; refusing to create a new database \
         there (point data_dir at an empty or new directory)"
    )]
    NotEmpty(String),
    #[error("the data dir is corrupt: {0}")]
    Corrupt(String),
    #[error("the data dir belongs to a cluster with a different genesis")]
    GenesisMismatch,
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(redb::Error::from(e).to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard serialization of our own in-memory types into a Vec cannot fail (no maps with
    // non-string keys, no unsized sequences); an empty value would show up as Corrupt on read.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn client_seq_key(client: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(client);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Height and hash of the newest block (height 0: the genesis state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub height: u64,
    #[serde(with = "crate::ledger::hexser")]
    pub hash: Hash,
}

/// One key/value pair of the engine's own durable state.
pub type EngineRecord = (Vec<u8>, Vec<u8>);

/// A change to the engine's own durable state (Raft term/vote/log, PBFT signed messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Drop log entries with index >= `from` (Raft: a conflicting suffix).
    LogTruncateFrom {
        from: u64,
    },
    LogPut {
        index: u64,
        value: Vec<u8>,
    },
    /// Drop log entries with index <= `upto` (compaction behind a snapshot).
    LogCompactTo {
        upto: u64,
    },
}

/// Everything one driver step wants durable, committed atomically with one fsync.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub engine: Vec<EngineOp>,
    /// Block sync: drop every staged block (a new sync target), before `stage`.
    pub clear_staging: bool,
    /// Block sync: verified blocks to stage (not applied yet).
    pub stage: Vec<Block>,
    /// Block sync: staged blocks to apply now, in order, on top of the head (before
    /// `blocks`); each must rebuild to exactly its stored hash, and leaves the staging table.
    pub synced: Vec<Block>,
    /// Batches to append as blocks, in order.
    pub blocks: Vec<NewBlock>,
}

#[derive(Debug, Clone)]
pub struct NewBlock {
    pub txs: Vec<Tx>,
    pub certificate: Option<Certificate>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.engine.is_empty()
            && !self.clear_staging
            && self.stage.is_empty()
            && self.synced.is_empty()
            && self.blocks.is_empty()
    }
}

/// A block the commit appended, with each transaction's outcome (None: duplicate, skipped).
#[derive(Debug, Clone)]
pub struct AppliedBlock {
    pub block: Block,
    pub outcomes: Vec<Option<TxOutcome>>,
    /// `block.txs[i].hash()`, computed once at commit.
    pub tx_hashes: Vec<Hash>,
}

/// One node's durable store.
pub struct Store {
    db: Database,
    /// Tx hash → heights, for receipts; built from the blocks on first use (at open for a
    /// node, lazily for `verify`), then kept current by every commit.
    receipts: RwLock<Option<receipts::ReceiptIndex>>,
}

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
    /// Opens the store in `dir`, creating a fresh one (initialised with `genesis`) only when
    /// the data dir is new or empty. An existing database file that is empty or not a database
    /// is refused rather than replaced: it may be all that held this node's Raft term and vote
    /// or its PBFT signed messages, and starting over could make the node vote twice or sign
    /// conflicting messages. A data dir created for another genesis is refused too.
    pub fn open(dir: &Path, genesis: &Genesis) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        };
        let path = dir.join(DB_FILE);
        let db = if path.exists() {
            let len = std::fs::metadata(&path).map_err(io)?.len();
            if len == 0 {
                return Err(StoreError::Unusable {
                    path: path.display().to_string(),
                    why: "the file is empty".into(),
                });
            }
            Database::open(&path).map_err(|e| StoreError::Unusable {
                path: path.display().to_string(),
                why: redb::Error::from(e).to_string(),
            })?
        } else {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(dir).map_err(io)?;
            if std::fs::read_dir(dir).map_err(io)?.next().is_some() {
                return Err(StoreError::NotEmpty(dir.display().to_string()));
            }
            let db = Database::create(&path)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            db
        };
        Self::init(db, genesis)
    }

    /// Opens a store on any redb backend (the simulator's crashable in-memory disk).
    pub fn with_backend(
        backend: impl redb::StorageBackend,
        genesis: &Genesis,
    ) -> Result<Store, StoreError> {
        let db = Database::builder().create_with_backend(backend)?;
        Self::init(db, genesis)
    }

    fn init(db: Database, genesis: &Genesis) -> Result<Store, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            // Create every table so readers never meet a missing one.
            txn.open_table(BLOCKS)?;
            txn.open_table(KV)?;
            txn.open_table(CLIENT_SEQ)?;
            txn.open_table(TX_RESULTS)?;
            txn.open_table(ENGINE_KV)?;
            txn.open_table(ENGINE_LOG)?;
            txn.open_table(SYNC_STAGING)?;
            let mut balances = txn.open_table(BALANCES)?;
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(META_GENESIS)?.map(|v| v.value().to_vec());
            match stored {
                Some(bytes) => {
                    let g: Genesis = decode("genesis", &bytes)?;
                    if &g != genesis {
                        return Err(StoreError::GenesisMismatch);
                    }
                }
                None => {
                    meta.insert(META_GENESIS, encode(genesis).as_slice())?;
                    let head = Head {
                        height: 0,
                        hash: genesis.hash(),
                    };
                    meta.insert(META_HEAD, encode(&head).as_slice())?;
                    meta.insert(META_BASE, encode(&head).as_slice())?;
                    for (account, amount) in &genesis.balances {
                        balances.insert(account.as_str(), *amount)?;
                    }
                }
            }
        }
        txn.commit()?;
        let store = Store::wrap(db);
        store.with_receipts(|_| ())?;
        Ok(store)
    }

    fn wrap(db: Database) -> Store {
        Store {
            db,
            receipts: RwLock::new(None),
        }
    }

    /// Runs `f` on the receipt index, building it from the stored blocks first if needed.
    fn with_receipts<T>(
        &self,
        f: impl FnOnce(&receipts::ReceiptIndex) -> T,
    ) -> Result<T, StoreError> {
        {
            let ix = self.receipts.read().unwrap_or_else(|p| p.into_inner());
            if let Some(ix) = ix.as_ref() {
                return Ok(f(ix));
            }
        }
        let mut ix = self.receipts.write().unwrap_or_else(|p| p.into_inner());
        if ix.is_none() {
            let mut built = receipts::ReceiptIndex::default();
            let txn = self.db.begin_read()?;
            for entry in txn.open_table(BLOCKS)?.iter()? {
                let (height, bytes) = entry?;
                let height = height.value();
                let block: Block = decode(&format!("block {height}"), bytes.value())?;
                for tx in &block.txs {
                    built.insert(&tx.hash(), height);
                }
            }
            tracing::debug!(entries = built.len(), "receipt index built from the blocks");
            let out = f(&built);
            *ix = Some(built);
            return Ok(out);
        }
        // Another caller built it while this one waited for the lock.
        match ix.as_ref() {
            Some(ix) => Ok(f(ix)),
            None => Err(StoreError::Corrupt("receipt index missing".into())),
        }
    }

    /// Opens an existing data dir read-only (for `faultline verify`), without knowing the genesis.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let db = Database::open(path)?;
        Ok(Store::wrap(db))
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<T, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        let v = t
            .get(key)?
            .ok_or_else(|| StoreError::Corrupt(format!("missing {key}")))?;
        decode(key, v.value())
    }

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
        let meta = txn.open_table(META)?;
        let head: Head = decode(
            META_HEAD,
            meta.get(META_HEAD)?
                .ok_or_else(|| StoreError::Corrupt(format!("missing {META_HEAD}")))?
                .value(),
        )?;
        let t = txn.open_table(KV)?;
        Ok((t.get(key)?.map(|v| v.value().to_string()), head.height))
    }

    /// An account's balance and the height it is the balance at, read in one transaction (see
    /// [`Store::get_with_height`]).
    pub fn balance_with_height(&self, account: &str) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let head: Head = decode(
            META_HEAD,
            meta.get(META_HEAD)?
                .ok_or_else(|| StoreError::Corrupt(format!("missing {META_HEAD}")))?
                .value(),
        )?;
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

    /// Height of the lowest block this store holds (`None`: no block yet). 1 on a node with
    /// the whole chain.
    pub fn first_height(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BLOCKS)?;
        let first = t.first()?.map(|(k, _)| k.value());
        Ok(first)
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
