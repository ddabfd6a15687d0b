//! Micro-benchmarks of what bounds faultline's throughput: client signature checks, applying a
//! block to the store, and one committed batch through each protocol core (all messages
//! delivered in memory, PBFT signatures included). Run: `cargo bench --bench cores`.

use std::collections::VecDeque;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use faultline_bft::{App, Config as BftConfig, InvalidBatch, Replica};
use faultline_node::ledger::tx::verify_batch;
use faultline_node::ledger::{Genesis, Op, Tx};
use faultline_node::store::crash_backend::CrashBackend;
use faultline_node::store::{NewBlock, Store, WriteBatch};
use faultline_raft::{Config as RaftConfig, RawNode, Role};
use sha2::{Digest, Sha256};

fn txs(n: u64) -> Vec<Tx> {
    let key = SigningKey::from_bytes(&[7; 32]);
    (1..=n)
        .map(|s| {
            Tx::sign(
                &key,
                s,
                Op::Transfer {
                    from: "alice".into(),
                    to: "bob".into(),
                    amount: 1,
                },
            )
        })
        .collect()
}

fn crypto(c: &mut Criterion) {
    let batch = txs(256);
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut g = c.benchmark_group("crypto");
    g.bench_function("tx_sign", |b| {
        b.iter(|| {
            Tx::sign(
                &key,
                1,
                Op::Put {
                    key: "k".into(),
                    value: "v".into(),
                },
            )
        })
    });
    g.bench_function("tx_verify_one", |b| b.iter(|| batch[0].verify()));
    g.throughput(Throughput::Elements(256));
    g.bench_function("tx_verify_batch_256", |b| b.iter(|| verify_batch(&batch)));
    g.finish();
}

fn ledger(c: &mut Criterion) {
    let genesis = Genesis {
        balances: [("alice".to_string(), u64::MAX / 2)].into_iter().collect(),
    };
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(1024));
    let block = txs(1024);
    g.bench_function("commit_block_1024_txs", |b| {
        b.iter_batched(
            || Store::with_backend(CrashBackend::new(), &genesis).unwrap(),
            |store| {
                store
                    .commit(WriteBatch {
                        blocks: vec![NewBlock {
                            txs: block.clone(),
                            certificate: None,
                        }],
                        ..Default::default()
                    })
                    .unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Delivers every message until the cluster is quiet (persistence is free here).
fn raft_pump(nodes: &mut [RawNode]) -> u64 {
    let mut queue = VecDeque::new();
    let mut committed = 0;
    loop {
        for n in nodes.iter_mut() {
            if n.has_ready() {
                let r = n.ready();
                committed += r.committed.len() as u64;
                queue.extend(r.messages);
            }
        }
        let Some(m) = queue.pop_front() else {
            return committed;
        };
        let to = m.to as usize;
        let _ = nodes[to].step(m);
    }
}

fn raft_core(c: &mut Criterion) {
    let mut nodes: Vec<RawNode> = (0..3)
        .map(|i| RawNode::new(RaftConfig::new(i, vec![0, 1, 2])).unwrap())
        .collect();
    while nodes[0].role() != Role::Leader {
        nodes[0].tick();
        raft_pump(&mut nodes);
    }
    let data = postcard::to_allocvec(&txs(1024)).unwrap();
    let mut g = c.benchmark_group("raft_core");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("commit_batch_1024_txs_n3", |b| {
        b.iter(|| {
            nodes[0].propose(data.clone()).unwrap();
            raft_pump(&mut nodes)
        })
    });
    g.finish();
}

struct ShaApp;
impl App for ShaApp {
    fn request_digest(&self, r: &[u8]) -> Option<[u8; 32]> {
        Some(Sha256::digest(r).into())
    }
    fn batch_digest(&self, rs: &[Vec<u8>]) -> Result<[u8; 32], InvalidBatch> {
        let mut h = Sha256::new();
        for r in rs {
            h.update(Sha256::digest(r));
        }
        Ok(h.finalize().into())
    }
}

fn pbft_core(c: &mut Criterion) {
    let n = 4u64;
    let keys: Vec<SigningKey> = (0..n)
        .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
        .collect();
    let public: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
    let mut replicas: Vec<Replica<ShaApp>> = (0..n)
        .map(|i| {
            let mut cfg = BftConfig::new(i, public.clone());
            cfg.max_batch = 1024;
            Replica::new(cfg, keys[i as usize].clone(), ShaApp).unwrap()
        })
        .collect();
    let mut seq = 0u64;
    let mut g = c.benchmark_group("pbft_core");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("commit_batch_1024_requests_n4", |b| {
        b.iter(|| {
            for _ in 0..1024 {
                seq += 1;
                let _ = replicas[0].submit(seq.to_be_bytes().to_vec());
            }
            replicas[0].tick();
            let mut queue = VecDeque::new();
            let mut committed = 0;
            loop {
                for (i, r) in replicas.iter_mut().enumerate() {
                    let ready = r.ready();
                    committed += ready.committed.len();
                    for b in &ready.committed {
                        if b.seq % 16 == 0 {
                            r.executed(b.seq, b.digest);
                        }
                    }
                    queue.extend(ready.messages.into_iter().map(|m| (i as u64, m)));
                }
                let Some((from, m)) = queue.pop_front() else {
                    break;
                };
                let _ = replicas[m.to as usize].step(from, &m.bytes);
            }
            committed
        })
    });
    g.finish();
}

criterion_group!(benches, crypto, ledger, raft_core, pbft_core);
criterion_main!(benches);
