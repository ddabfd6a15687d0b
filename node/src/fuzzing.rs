//! Entry points for fuzzing every decoder that sees untrusted bytes, shared by the `cargo fuzz`
//! targets in `fuzz/` (long runs, coverage-guided) and the smoke test in the test suite (every
//! target over its seed corpus and mutations of it, in CI). Each function must return for any
//! input: a panic, an abort or a hang is the bug the fuzzer reports.

use std::sync::OnceLock;

use crate::config::{ClusterConfig, NodeConfig, Protocol};
use crate::engine;
use crate::ledger::Tx;
use crate::setup::{open_engine, EngineSetup};
use crate::sim::{sim_cluster, sim_node_key, sim_timing};
use crate::store::Store;

/// The cluster and the untouched genesis store every [`engine_message`] input starts from,
/// built once per process: building them (key derivation, a new redb database) costs far more
/// than one input, and the fuzzer needs millions of inputs.
struct Pristine {
    cluster: ClusterConfig,
    store: Store,
    key: ed25519_dalek::SigningKey,
}

fn pristine(protocol: Protocol) -> Option<&'static Pristine> {
    static RAFT: OnceLock<Option<Pristine>> = OnceLock::new();
    static PBFT: OnceLock<Option<Pristine>> = OnceLock::new();
    let cell = match protocol {
        Protocol::Raft => &RAFT,
        Protocol::Pbft => &PBFT,
    };
    cell.get_or_init(|| {
        let cluster = sim_cluster(protocol, FUZZ_NODES, 1).ok()?;
        let store =
            Store::with_backend(redb::backends::InMemoryBackend::new(), &cluster.genesis).ok()?;
        Some(Pristine {
            cluster,
            store,
            key: sim_node_key(0),
        })
    })
    .as_ref()
}

const FUZZ_NODES: usize = 4;

/// A peer's protocol message as the engine of `protocol` receives it from the transport: the
/// first byte picks the (authenticated) sender, the rest is the payload. The engine decodes,
/// checks and processes it, then takes a tick, and all its output is driven through a store.
///
/// Every input starts from the same genesis state, so a crash reproduces from its input alone.
/// The engine reads the shared genesis store; the first write it produces moves the run to a
/// fresh in-memory store (same genesis, so the engine cannot tell), which is committed and
/// driven from then on. Most mutated inputs are refused before they write anything and never
/// pay for a new database.
pub fn engine_message(protocol: Protocol, data: &[u8]) {
    let Some((&who, payload)) = data.split_first() else {
        return;
    };
    let Some(base) = pristine(protocol) else {
        return;
    };
    let Ok(mut engine) = open_engine(
        EngineSetup {
            id: 0,
            cluster: &base.cluster,
            key: base.key.clone(),
            timing: sim_timing(),
            batching: crate::config::Batching::default(),
            limits: crate::config::Limits::default(),
            byzantine: None,
            seed: 1,
            read_nonce_seed: 1,
        },
        &base.store,
    ) else {
        return;
    };
    let from = 1 + u64::from(who) % (FUZZ_NODES as u64 - 1);
    let _ = engine.message_kind(payload);
    let _ = engine.on_message(from, payload);
    let mut own: Option<Store> = None;
    for tick in [false, true] {
        if tick {
            engine.on_tick();
        }
        loop {
            let store = own.as_ref().unwrap_or(&base.store);
            let Ok(step) = engine.poll(store) else {
                return;
            };
            if step.is_empty() {
                break;
            }
            let blocks = if step.write.is_empty() {
                Vec::new()
            } else {
                if own.is_none() {
                    let Ok(fresh) = Store::with_backend(
                        redb::backends::InMemoryBackend::new(),
                        &base.cluster.genesis,
                    ) else {
                        return;
                    };
                    own = Some(fresh);
                }
                let Some(store) = own.as_ref() else {
                    return;
                };
                match store.commit(step.write) {
                    Ok(blocks) => blocks,
                    Err(_) => return,
                }
            };
            let store = own.as_ref().unwrap_or(&base.store);
            if engine.applied(&blocks, store).is_err() {
                return;
            }
        }
    }
}

/// A `POST /v1/tx`, `/v1/txs`, admin transfer-leader or partition body as the API parses and
/// checks it, and the
/// same bytes as a reply a (possibly Byzantine) replica sends a client, through the client
/// protocol as `faultline client` decides on it.
pub fn api_body(data: &[u8]) {
    if let Ok(tx) = serde_json::from_slice::<Tx>(data) {
        let _ = tx.verify();
        let _ = tx.hash();
    }
    if let Ok(txs) = serde_json::from_slice::<Vec<Tx>>(data) {
        let _ = crate::ledger::tx::verify_batch(&txs);
    }
    let _ = serde_json::from_slice::<crate::api_types::Partition>(data);
    if let Ok(req) = serde_json::from_slice::<crate::api_types::TransferLeaderRequest>(data) {
        let _ = req.verifies();
    }
    let _ = serde_json::from_slice::<crate::api_types::TransferLeaderReply>(data);
    reply_body(data);
}

/// A reply body through the client's decision: write replies into a [`ClientWrite`], read
/// replies into a [`ClientRead`], status and block headers decoded.
///
/// [`ClientWrite`]: crate::client_protocol::ClientWrite
/// [`ClientRead`]: crate::client_protocol::ClientRead
fn reply_body(data: &[u8]) {
    use crate::api_types::{BalanceReply, BlockHeader, KvReply, StatusReply};
    use crate::client::wire::{write_answer, Answer, Trust};
    use crate::client_protocol::{ClientRead, ClientWrite, ReadTarget};
    let Some(base) = pristine(Protocol::Pbft) else {
        return;
    };
    let answer = Answer {
        code: 200,
        body: data.to_vec().into(),
    };
    let mut w = ClientWrite::new(&base.cluster, 0, [[0u8; 32]]);
    let _ = w.on_answer(1, write_answer(1, &answer, Trust::Signed(&base.cluster)));
    let _ = w.on_answer(2, write_answer(2, &answer, Trust::Endpoint));
    let mut r = ClientRead::new(&base.cluster, ReadTarget::Kv("k".into()));
    let _ = r.on_reply(
        &base.cluster,
        1,
        answer.json::<KvReply>().map(KvReply::signed),
    );
    let _ = r.on_reply(
        &base.cluster,
        1,
        answer.json::<BalanceReply>().map(BalanceReply::signed),
    );
    let _ = answer.json::<StatusReply>();
    let _ = answer.json::<BlockHeader>();
    let _ = answer.error_text();
}

/// cluster.toml and node.toml as `faultline run` reads them, and a key file's text.
pub fn config_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = toml::from_str::<ClusterConfig>(&text) {
        let _ = c.validate();
    }
    if let Ok(c) = toml::from_str::<NodeConfig>(&text) {
        let _ = c.validate("fuzz");
    }
    let _ = crate::keys::parse_secret(&text);
}

/// Real traffic to seed the fuzzers: the messages of a 4-node cluster of `protocol` electing a
/// leader (or primary) and committing a few batches, each prefixed with its sender byte as
/// [`engine_message`] expects. Deterministic.
pub fn seed_messages(protocol: Protocol) -> Vec<Vec<u8>> {
    let n = 4;
    let Ok(cluster) = sim_cluster(protocol, n, 1) else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for id in 0..n as u64 {
        let Ok(store) =
            Store::with_backend(redb::backends::InMemoryBackend::new(), &cluster.genesis)
        else {
            return Vec::new();
        };
        let Ok(engine) = open_engine(
            EngineSetup {
                id,
                cluster: &cluster,
                key: sim_node_key(id as usize),
                timing: sim_timing(),
                batching: crate::config::Batching::default(),
                limits: crate::config::Limits::default(),
                byzantine: None,
                seed: 7,
                read_nonce_seed: 7,
            },
            &store,
        ) else {
            return Vec::new();
        };
        nodes.push((engine, store));
    }
    let client = crate::sim::sim_client_key(0);
    let mut seeds = Vec::new();
    let mut seq = 0;
    let mut k = 0usize;
    for round in 0..400 {
        let mut out = Vec::new();
        for (i, (engine, store)) in nodes.iter_mut().enumerate() {
            engine.on_tick();
            if round % 20 == 10 {
                let txs = (0..3)
                    .map(|_| {
                        seq += 1;
                        Tx::sign(
                            &client,
                            seq,
                            crate::ledger::Op::Put {
                                key: format!("k{}", seq % 5),
                                value: format!("v{seq}"),
                            },
                        )
                    })
                    .collect();
                let _ = engine.propose(txs);
            }
            if let Ok((msgs, _)) = engine::drive(engine.as_mut(), store) {
                out.extend(msgs.into_iter().map(|m| (i as u64, m)));
            }
        }
        for (from, m) in out {
            k += 1;
            if seeds.len() < 512 && (k % 3 == 0 || m.bytes.len() > 200) {
                let mut s = vec![from as u8];
                s.extend_from_slice(&m.bytes);
                seeds.push(s);
            }
            if let Some((engine, store)) = nodes.get_mut(m.to as usize) {
                let _ = engine.on_message(from, &m.bytes);
                let _ = engine::drive(engine.as_mut(), store);
            }
        }
    }
    seeds
}

/// Seeds for [`api_body`]: a signed transaction of each kind, a batch of them, a partition
/// body, and signed write and read replies.
pub fn seed_api_bodies() -> Vec<Vec<u8>> {
    use crate::ledger::Op;
    let key = crate::sim::sim_client_key(0);
    let txs = [
        Tx::sign(
            &key,
            1,
            Op::Put {
                key: "k".into(),
                value: "v".into(),
            },
        ),
        Tx::sign(&key, 2, Op::Delete { key: "k".into() }),
        Tx::sign(
            &key,
            3,
            Op::Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 5,
            },
        ),
    ];
    let mut out: Vec<Vec<u8>> = txs
        .iter()
        .filter_map(|t| serde_json::to_vec(t).ok())
        .collect();
    out.extend(serde_json::to_vec(&txs).ok());
    // Replies a client decodes: signed by replica 1 of the fuzzing cluster.
    use crate::api_types::{BatchEntry, BatchReply, CommittedReply, EntryResult, KvReply};
    let node = sim_node_key(1);
    let rec = crate::ledger::TxRecord {
        height: 3,
        tx_hash: [0; 32],
        outcome: crate::ledger::TxOutcome::Ok,
    };
    out.extend(serde_json::to_vec(&CommittedReply::sign(&node, 1, &rec)).ok());
    let entry = BatchEntry {
        height: 0,
        result: EntryResult::Rejected {
            rejected: "stale".into(),
        },
        tx_hash: [0; 32],
    };
    out.extend(serde_json::to_vec(&BatchReply::sign(&node, 1, vec![entry])).ok());
    let kv = KvReply::sign(&node, 1, "k".into(), Some("v".into()), 3);
    out.extend(serde_json::to_vec(&kv).ok());
    out.push(br#"{"blocked":[1,2]}"#.to_vec());
    let transfer = crate::api_types::TransferLeaderRequest::sign(&key, 2, 7);
    out.extend(serde_json::to_vec(&transfer).ok());
    out
}

/// Seeds for [`config_text`]: a cluster.toml and a node.toml as `testnet` writes them, and a
/// key file.
pub fn seed_config_texts() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(c) = sim_cluster(Protocol::Pbft, 4, 2) {
        out.extend(toml::to_string(&c).ok().map(String::into_bytes));
    }
    out.push(
        b"id = 0\ncluster = \"../cluster.toml\"\nkey_file = \"node.key\"\ndata_dir = \"data\"\n\
          [timing]\ntick_ms = 10\n[limits]\nmax_message_bytes = 4194304\n"
            .to_vec(),
    );
    out.push(hex::encode(sim_node_key(0).to_bytes()).into_bytes());
    out
}

/// Seeds for the net frame reader: frames of real messages, back to back.
pub fn seed_frames() -> Vec<Vec<u8>> {
    let mut wire = Vec::new();
    for m in seed_messages(Protocol::Raft).into_iter().take(16) {
        wire.extend_from_slice(&(m.len() as u32 - 1).to_be_bytes());
        wire.extend_from_slice(&m[1..]);
    }
    vec![wire, vec![0, 0, 0, 0], vec![0, 0, 0, 3, 1, 2, 3]]
}
