//! Durable state of one node in one embedded redb database (the data dir's only file): the
//! ledger (blocks, KV, balances, per-client seqs and results) and the consensus engine's own
//! state. Everything one driver step produces commits in ONE write transaction with an fsync
//! (group commit), so a block and its state changes — and the votes/log entries that go with
//! them — are durable together or not at all.

mod commit;
pub mod crash_backend;
mod engine_state;
mod reads;
mod receipts;

use std::path::Path;
use std::sync::RwLock;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::ledger::{Block, Certificate, Genesis, Hash, Tx, TxOutcome};

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

/// Postcard bytes of one of our own values, for the store or the wire. Encoding into a Vec
/// fails only for a sequence of unknown length or a `Serialize` impl that errors, and none of
/// our types has either, so a failure is a bug: it stops the node here rather than persisting
/// or sending empty bytes that would surface later, far away, as corruption.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_allocvec(value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("BUG: cannot encode a {}: {e}", std::any::type_name::<T>()),
    }
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
        meta_in(&self.db.begin_read()?, key)
    }
}

/// A META value read inside `txn`, so a caller can read it together with other tables.
fn meta_in<T: for<'de> Deserialize<'de>>(
    txn: &redb::ReadTransaction,
    key: &str,
) -> Result<T, StoreError> {
    let t = txn.open_table(META)?;
    let v = t
        .get(key)?
        .ok_or_else(|| StoreError::Corrupt(format!("missing {key}")))?;
    decode(key, v.value())
}
