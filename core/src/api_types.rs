//! Every request and reply body of the HTTP API (docs/SPEC.md "HTTP API"), defined once so that
//! the server that writes them, the clients that read them (`faultline client`, the workload,
//! bench, nemesis, the live view) and the simulator's clients cannot drift apart field by field.
//!
//! They live in the deterministic crate because the simulator's clients decide on the same
//! replies as the real ones, and this crate must not depend on the node.
//!
//! The wire format is the contract, not these types: a field renamed here is a break for every
//! script that talks to a node, which is what the tests at the bottom (literal JSON from the
//! SPEC) are for. Fields of the reply structs are declared in alphabetical order because the API
//! used to build these objects as `serde_json` maps, which sort their keys; declaring them in
//! that order keeps the bytes on the wire exactly as they were.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::config::Protocol;
use crate::ledger::{hexser, Block, Hash, TxOutcome, TxRecord};
pub use crate::reply::{BatchEntry, EntryResult};
use crate::reply::{ReadReply, ReadValue};

/// `{"error":"<sentence>"}`: what every route answers when it refuses or fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

impl ErrorReply {
    pub fn new(msg: impl std::fmt::Display) -> ErrorReply {
        ErrorReply {
            error: msg.to_string(),
        }
    }
}

/// The `status` of a write reply: whether the node waited for the commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    Committed,
    /// `?wait=false`: the node took the transactions and did not wait for them.
    Accepted,
}

/// A transaction hash in a list (`tx_hashes`), as hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxHash(#[serde(with = "hexser")] pub Hash);

/// `POST /v1/tx` (200) and `GET /v1/txs/{hash}` (200): a committed transaction, signed by the
/// node that answers (docs/SPEC.md "Signed replies"; [`crate::reply::sign`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedReply {
    pub height: u64,
    /// The signer. A raft follower relays its leader's reply, so this is the leader's id.
    pub node: u64,
    pub result: TxOutcome,
    #[serde(with = "hexser")]
    pub signature: [u8; 64],
    pub status: WriteStatus,
    #[serde(with = "hexser")]
    pub tx_hash: Hash,
}

impl CommittedReply {
    /// The reply node `node` sends for a transaction it applied.
    pub fn sign(key: &SigningKey, node: u64, rec: &TxRecord) -> CommittedReply {
        CommittedReply {
            height: rec.height,
            node,
            result: rec.outcome.clone(),
            signature: crate::reply::sign(key, &rec.tx_hash, rec.height, &rec.outcome),
            status: WriteStatus::Committed,
            tx_hash: rec.tx_hash,
        }
    }

    /// Whether `node_key` signed this reply.
    pub fn verifies(&self, node_key: &[u8; 32]) -> bool {
        crate::reply::verify(
            node_key,
            &self.tx_hash,
            self.height,
            &self.result,
            &self.signature,
        )
    }
}

/// `POST /v1/txs` (200): every transaction's entry in request order, signed once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply {
    pub node: u64,
    pub results: Vec<BatchEntry>,
    #[serde(with = "hexser")]
    pub signature: [u8; 64],
    pub status: WriteStatus,
}

impl BatchReply {
    /// The reply node `node` sends for a batch it finished.
    pub fn sign(key: &SigningKey, node: u64, results: Vec<BatchEntry>) -> BatchReply {
        BatchReply {
            node,
            signature: crate::reply::sign_batch(key, &results),
            results,
            status: WriteStatus::Committed,
        }
    }

    /// Whether `node_key` signed this reply.
    pub fn verifies(&self, node_key: &[u8; 32]) -> bool {
        crate::reply::verify_batch(node_key, &self.results, &self.signature)
    }
}

/// `POST /v1/tx` or `/v1/txs` with `?wait=false` (202).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedReply {
    pub status: WriteStatus,
    pub tx_hashes: Vec<TxHash>,
}

impl AcceptedReply {
    pub fn new(hashes: &[Hash]) -> AcceptedReply {
        AcceptedReply {
            status: WriteStatus::Accepted,
            tx_hashes: hashes.iter().copied().map(TxHash).collect(),
        }
    }
}

/// `GET /v1/kv/{key}`: 200 with the value, or 404 with `"value":null` and `error` beside the
/// same signed fields (absence is signed too: docs/SPEC.md "Signed read replies").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub height: u64,
    pub key: String,
    pub node: u64,
    #[serde(with = "hexser")]
    pub signature: [u8; 64],
    pub value: Option<String>,
}

impl KvReply {
    /// Node `node`'s signed statement that `key` is `value` at `height`.
    pub fn sign(
        key_pair: &SigningKey,
        node: u64,
        key: String,
        value: Option<String>,
        height: u64,
    ) -> KvReply {
        let signature = crate::reply::sign_kv(key_pair, &key, value.as_deref(), height);
        KvReply {
            error: value.is_none().then(|| format!("key {key:?} not found")),
            height,
            key,
            node,
            signature,
            value,
        }
    }

    /// What the signature vouches for.
    pub fn signed(self) -> ReadReply {
        ReadReply {
            node: self.node,
            read: ReadValue::Kv {
                key: self.key,
                value: self.value,
            },
            height: self.height,
            signature: self.signature,
        }
    }
}

/// `GET /v1/balances/{account}` (200; an account never credited has balance 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceReply {
    pub account: String,
    pub balance: u64,
    pub height: u64,
    pub node: u64,
    #[serde(with = "hexser")]
    pub signature: [u8; 64],
}

impl BalanceReply {
    /// Node `node`'s signed statement that `account` holds `balance` at `height`.
    pub fn sign(
        key: &SigningKey,
        node: u64,
        account: String,
        balance: u64,
        height: u64,
    ) -> BalanceReply {
        let signature = crate::reply::sign_balance(key, &account, balance, height);
        BalanceReply {
            account,
            balance,
            height,
            node,
            signature,
        }
    }

    /// What the signature vouches for.
    pub fn signed(self) -> ReadReply {
        ReadReply {
            node: self.node,
            read: ReadValue::Balance {
                account: self.account,
                balance: self.balance,
            },
            height: self.height,
            signature: self.signature,
        }
    }
}

/// A raft block sync in progress, as `/v1/status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSyncStatus {
    /// The lowest height fetched so far (the sync runs top down).
    pub fetched_from: u64,
    pub target_height: u64,
}

/// `GET /v1/status`. Fields a protocol lacks (`term` on pbft, `view` on raft) are null.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub block_sync: Option<BlockSyncStatus>,
    pub commit_index: u64,
    /// The lowest block held: 1 on a node with the whole chain, null before the first block.
    pub first_height: Option<u64>,
    #[serde(with = "hexser")]
    pub head_hash: Hash,
    pub height: u64,
    pub id: u64,
    pub leader: Option<u64>,
    pub peers_connected: u64,
    /// The other members this node has no connection to (it keeps redialling them).
    pub peers_unreachable: Vec<u64>,
    /// Transactions this node holds that are not committed yet (see `EngineStatus`): zero on
    /// every node of a quiet cluster means no further block is on its way.
    #[serde(default)]
    pub pending_txs: u64,
    pub protocol: Protocol,
    pub role: String,
    pub term: Option<u64>,
    pub view: Option<u64>,
}

/// `GET /v1/blocks/{height}?header=true`: a block without its transactions and certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    #[serde(with = "hexser")]
    pub hash: Hash,
    pub height: u64,
    #[serde(with = "hexser")]
    pub prev_hash: Hash,
    pub tx_count: u64,
}

impl BlockHeader {
    pub fn of(b: &Block) -> BlockHeader {
        BlockHeader {
            hash: b.hash,
            height: b.height,
            prev_hash: b.prev_hash,
            tx_count: b.txs.len() as u64,
        }
    }
}

/// `POST /v1/admin/partition`'s body and both admin routes' answer: the peers this node is cut
/// off from. Unknown fields are refused: a typo must not heal a partition by accident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub blocked: Vec<u64>,
}

/// Domain prefix of the bytes an admin key signs (docs/SPEC.md "Admin requests").
pub const ADMIN_DOMAIN: &[u8] = b"faultline-admin-v1";
/// Operation tag of a leadership transfer in the admin signing bytes.
const ADMIN_TAG_TRANSFER_LEADER: u8 = 1;

/// `POST /v1/admin/transfer-leader`: an admin asks the Raft leader of `term` to hand its
/// leadership to node `target` (thesis §3.10). Signed by the admin over
/// `b"faultline-admin-v1" ‖ admin key (32) ‖ 1 ‖ target (u64 BE) ‖ term (u64 BE)`. The term makes
/// the request single-use: a transfer (or any election) moves the cluster to a later term, after
/// which a replayed request is refused with `409`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    #[serde(with = "hexser")]
    pub admin: [u8; 32],
    pub target: u64,
    pub term: u64,
    #[serde(with = "hexser")]
    pub sig: [u8; 64],
}

impl TransferLeaderRequest {
    fn signing_bytes(admin: &[u8; 32], target: u64, term: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(ADMIN_DOMAIN.len() + 32 + 1 + 16);
        b.extend_from_slice(ADMIN_DOMAIN);
        b.extend_from_slice(admin);
        b.push(ADMIN_TAG_TRANSFER_LEADER);
        b.extend_from_slice(&target.to_be_bytes());
        b.extend_from_slice(&term.to_be_bytes());
        b
    }

    /// The request `key` signs to move the leadership of `term` to `target`.
    pub fn sign(key: &SigningKey, target: u64, term: u64) -> TransferLeaderRequest {
        use ed25519_dalek::Signer;
        let admin = key.verifying_key().to_bytes();
        let sig = key
            .sign(&Self::signing_bytes(&admin, target, term))
            .to_bytes();
        TransferLeaderRequest {
            admin,
            target,
            term,
            sig,
        }
    }

    /// Whether `admin` signed exactly this request (strict: no malleable signatures).
    pub fn verifies(&self) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.admin) else {
            return false;
        };
        let bytes = Self::signing_bytes(&self.admin, self.target, self.term);
        key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&self.sig))
            .is_ok()
    }
}

/// `POST /v1/admin/transfer-leader`'s answer once the target leads: who leads, in which term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderReply {
    pub leader: u64,
    pub term: u64,
}

/// `?wait=` of the write routes (default true).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct WaitQuery {
    pub wait: Option<bool>,
}

/// `?consistency=` of the read routes: `linearizable` (default) or `local`; anything else is a
/// 400 naming what was sent, so it stays a string here.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ReadQuery {
    pub consistency: Option<String>,
}

/// `?header=true` of `GET /v1/blocks/{height}`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct BlockQuery {
    pub header: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const HASH: &str = "e60748372507f28e8b3407360a530978f17cb4b4487f9d0e8f01f41a025fd805";

    fn sig_hex() -> String {
        "ab".repeat(64)
    }

    /// Decodes `spec` (a literal as docs/SPEC.md writes it) into `T`, checks that encoding it
    /// again gives the same JSON value, and that the bytes are exactly `wire` (the key order
    /// the API has always sent). A renamed, added or dropped field fails here.
    fn round_trip<T>(spec: &str, wire: &str) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let typed: T = serde_json::from_str(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let again = serde_json::to_string(&typed).unwrap();
        let a: Value = serde_json::from_str(spec).unwrap();
        let b: Value = serde_json::from_str(&again).unwrap();
        assert_eq!(a, b, "{spec} came back as {again}");
        assert_eq!(again, wire);
        typed
    }

    #[test]
    fn the_committed_reply_has_the_fields_of_the_spec() {
        let s = sig_hex();
        let spec = format!(
            r#"{{"status":"committed","height":3,"tx_hash":"{HASH}","result":"ok","node":1,"signature":"{s}"}}"#
        );
        let wire = format!(
            r#"{{"height":3,"node":1,"result":"ok","signature":"{s}","status":"committed","tx_hash":"{HASH}"}}"#
        );
        let r: CommittedReply = round_trip(&spec, &wire);
        assert_eq!((r.height, r.node, r.result), (3, 1, TxOutcome::Ok));
        let spec = spec.replace(r#""ok""#, r#"{"error":"insufficient funds"}"#);
        let r: CommittedReply = serde_json::from_str(&spec).unwrap();
        assert_eq!(r.result, TxOutcome::Error("insufficient funds".into()));
    }

    #[test]
    fn a_signed_committed_reply_verifies_only_with_its_signer() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let rec = TxRecord {
            height: 4,
            tx_hash: [7; 32],
            outcome: TxOutcome::Ok,
        };
        let r = CommittedReply::sign(&key, 2, &rec);
        assert!(r.verifies(&key.verifying_key().to_bytes()));
        let other = SigningKey::from_bytes(&[4u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(!r.verifies(&other));
        let mut forged = r.clone();
        forged.height = 5;
        assert!(!forged.verifies(&key.verifying_key().to_bytes()));
    }

    #[test]
    fn the_batch_reply_has_the_fields_of_the_spec() {
        let s = sig_hex();
        let other = "00".repeat(32);
        let spec = format!(
            r#"{{"status":"committed","node":2,"results":[{{"tx_hash":"{HASH}","height":7,"result":"ok"}},{{"tx_hash":"{other}","height":7,"result":{{"error":"insufficient funds"}}}},{{"tx_hash":"{other}","height":0,"result":{{"rejected":"seq 1 is at or below this client's last applied seq 4"}}}}],"signature":"{s}"}}"#
        );
        let wire = format!(
            r#"{{"node":2,"results":[{{"height":7,"result":"ok","tx_hash":"{HASH}"}},{{"height":7,"result":{{"error":"insufficient funds"}},"tx_hash":"{other}"}},{{"height":0,"result":{{"rejected":"seq 1 is at or below this client's last applied seq 4"}},"tx_hash":"{other}"}}],"signature":"{s}","status":"committed"}}"#
        );
        let r: BatchReply = round_trip(&spec, &wire);
        assert_eq!(
            r.results.iter().map(|e| &e.result).collect::<Vec<_>>(),
            [
                &EntryResult::Applied(TxOutcome::Ok),
                &EntryResult::Applied(TxOutcome::Error("insufficient funds".into())),
                &EntryResult::Rejected {
                    rejected: "seq 1 is at or below this client's last applied seq 4".into()
                },
            ]
        );
    }

    #[test]
    fn a_batch_reply_signs_the_bytes_its_entries_encode_to() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let entries = vec![BatchEntry {
            height: 5,
            result: EntryResult::Rejected {
                rejected: "stale".into(),
            },
            tx_hash: [1; 32],
        }];
        let r = BatchReply::sign(&key, 0, entries);
        assert!(r.verifies(&key.verifying_key().to_bytes()));
        // The signed result is the entry's JSON, as it was when results were JSON values.
        assert!(crate::reply::batch_signing_bytes(&r.results).ends_with(br#"{"rejected":"stale"}"#));
        // What a client decodes verifies against what the node signed.
        let back: BatchReply = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert!(back.verifies(&key.verifying_key().to_bytes()));
    }

    #[test]
    fn the_accepted_reply_has_the_fields_of_the_spec() {
        let spec = format!(r#"{{"status":"accepted","tx_hashes":["{HASH}"]}}"#);
        let r: AcceptedReply = round_trip(&spec, &spec);
        assert_eq!(r, AcceptedReply::new(&[r.tx_hashes[0].0]));
    }

    #[test]
    fn kv_replies_have_the_fields_of_the_spec_present_and_absent() {
        let s = sig_hex();
        let spec =
            format!(r#"{{"key":"color","value":"blue","height":9,"node":2,"signature":"{s}"}}"#);
        let wire =
            format!(r#"{{"height":9,"key":"color","node":2,"signature":"{s}","value":"blue"}}"#);
        let r: KvReply = round_trip(&spec, &wire);
        assert_eq!(r.value.as_deref(), Some("blue"));
        let spec = format!(
            r#"{{"error":"key \"color\" not found","key":"color","value":null,"height":9,"node":2,"signature":"{s}"}}"#
        );
        let wire = format!(
            r#"{{"error":"key \"color\" not found","height":9,"key":"color","node":2,"signature":"{s}","value":null}}"#
        );
        let r: KvReply = round_trip(&spec, &wire);
        assert_eq!(r.value, None);
    }

    #[test]
    fn signed_read_replies_verify_and_say_what_was_signed() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let r = KvReply::sign(&key, 2, "k".into(), None, 9);
        assert_eq!(r.error.as_deref(), Some("key \"k\" not found"));
        let back: KvReply = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let s = back.signed();
        assert!(crate::reply::verify_read(
            &pk,
            &s.read,
            s.height,
            &s.signature
        ));
        let b = BalanceReply::sign(&key, 1, "alice".into(), 5, 3).signed();
        assert!(crate::reply::verify_read(
            &pk,
            &b.read,
            b.height,
            &b.signature
        ));
        assert_eq!(
            b.read,
            ReadValue::Balance {
                account: "alice".into(),
                balance: 5
            }
        );
    }

    #[test]
    fn the_balance_reply_has_the_fields_of_the_spec() {
        let s = sig_hex();
        let spec =
            format!(r#"{{"account":"alice","balance":993,"height":4,"node":0,"signature":"{s}"}}"#);
        let r: BalanceReply = round_trip(&spec, &spec);
        assert_eq!(r.balance, 993);
    }

    #[test]
    fn the_status_reply_has_the_fields_of_the_spec() {
        let spec = format!(
            r#"{{"id":1,"protocol":"raft","role":"follower","term":3,"view":null,"leader":0,"height":12,"first_height":1,"head_hash":"{HASH}","commit_index":14,"peers_connected":2,"peers_unreachable":[],"pending_txs":5,"block_sync":null}}"#
        );
        let wire = format!(
            r#"{{"block_sync":null,"commit_index":14,"first_height":1,"head_hash":"{HASH}","height":12,"id":1,"leader":0,"peers_connected":2,"peers_unreachable":[],"pending_txs":5,"protocol":"raft","role":"follower","term":3,"view":null}}"#
        );
        let r: StatusReply = round_trip(&spec, &wire);
        assert_eq!(
            (r.protocol, r.term, r.view, r.pending_txs),
            (Protocol::Raft, Some(3), None, 5)
        );
        let spec = format!(
            r#"{{"id":3,"protocol":"pbft","role":"backup","term":null,"view":2,"leader":2,"height":0,"first_height":null,"head_hash":"{HASH}","commit_index":0,"peers_connected":1,"peers_unreachable":[0,1],"block_sync":{{"target_height":90,"fetched_from":40}}}}"#
        );
        let r: StatusReply = serde_json::from_str(&spec).unwrap();
        assert_eq!(
            r.block_sync,
            Some(BlockSyncStatus {
                fetched_from: 40,
                target_height: 90
            })
        );
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains(r#""block_sync":{"fetched_from":40,"target_height":90}"#));
    }

    #[test]
    fn the_block_header_has_the_fields_of_the_spec() {
        let zero = "00".repeat(32);
        let spec = format!(r#"{{"height":2,"prev_hash":"{zero}","hash":"{HASH}","tx_count":17}}"#);
        let wire = format!(r#"{{"hash":"{HASH}","height":2,"prev_hash":"{zero}","tx_count":17}}"#);
        let h: BlockHeader = round_trip(&spec, &wire);
        assert_eq!(h.tx_count, 17);
    }

    #[test]
    fn errors_and_partitions_have_the_fields_of_the_spec() {
        let e: ErrorReply = round_trip(
            r#"{"error":"unknown transaction"}"#,
            r#"{"error":"unknown transaction"}"#,
        );
        assert_eq!(e, ErrorReply::new("unknown transaction"));
        let p: Partition = round_trip(r#"{"blocked":[1,2]}"#, r#"{"blocked":[1,2]}"#);
        assert_eq!(p.blocked, [1, 2]);
        // The node refuses a body it does not understand rather than heal by accident.
        assert!(serde_json::from_str::<Partition>(r#"{"blocked":[],"heal":true}"#).is_err());
        assert!(serde_json::from_str::<Partition>(r#"{"block":[1]}"#).is_err());
    }

    #[test]
    fn a_reply_with_a_missing_or_malformed_field_is_refused() {
        let s = sig_hex();
        let no_sig = format!(
            r#"{{"height":3,"node":1,"result":"ok","status":"committed","tx_hash":"{HASH}"}}"#
        );
        assert!(serde_json::from_str::<CommittedReply>(&no_sig).is_err());
        let short_hash = format!(
            r#"{{"height":3,"node":1,"result":"ok","signature":"{s}","status":"committed","tx_hash":"abcd"}}"#
        );
        assert!(serde_json::from_str::<CommittedReply>(&short_hash).is_err());
        let odd_result = format!(
            r#"{{"height":3,"node":1,"result":{{"maybe":1}},"signature":"{s}","status":"committed","tx_hash":"{HASH}"}}"#
        );
        assert!(serde_json::from_str::<CommittedReply>(&odd_result).is_err());
    }
}
