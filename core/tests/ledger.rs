//! Ledger and store: the SPEC signing vector, signature checks, exactly-once, conservation,
//! the hash chain, and crash atomicity of the store.

use ed25519_dalek::SigningKey;
use faultline_core::ledger::tx::{signing_bytes, verify_batch};
use faultline_core::ledger::{Block, Genesis, Op, Tx, TxError, TxOutcome};
use faultline_core::store::crash_backend::CrashBackend;
use faultline_core::store::{NewBlock, Store, WriteBatch};
use faultline_core::verify::{verify_store, Verdict};
use proptest::prelude::*;

/// The README's test vector, computed independently with Python `cryptography` (Ed25519) and
/// hashlib: secret key = bytes 0x00..0x1f.
const VECTOR_SECRET: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];
const VECTOR_PUBLIC: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const VECTOR_MSG: &str = "6661756c746c696e652d74782d763103a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b800000000000000070300000005616c69636500000003626f620000000000000019";
const VECTOR_SIG: &str = "c84cff449803484e05115a5089984e518cc2ebb56b925f2f61469915594c73db0468b305c28ebfe33948bdd7c78043bec4b82c26b275058c13997939529c8b02";
const VECTOR_HASH: &str = "e60748372507f28e8b3407360a530978f17cb4b4487f9d0e8f01f41a025fd805";

fn vector_tx() -> Tx {
    Tx::sign(
        &SigningKey::from_bytes(&VECTOR_SECRET),
        7,
        Op::Transfer {
            from: "alice".into(),
            to: "bob".into(),
            amount: 25,
        },
    )
}

#[test]
fn signing_vector_matches_spec() {
    let tx = vector_tx();
    assert_eq!(hex::encode(tx.client), VECTOR_PUBLIC);
    assert_eq!(
        hex::encode(signing_bytes(&tx.client, tx.seq, &tx.op)),
        VECTOR_MSG
    );
    assert_eq!(hex::encode(tx.sig), VECTOR_SIG);
    assert_eq!(hex::encode(tx.hash()), VECTOR_HASH);
    tx.verify().unwrap();
}

#[test]
fn json_form_matches_spec() {
    let tx = vector_tx();
    let json = serde_json::to_value(&tx).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "client": VECTOR_PUBLIC, "seq": 7,
            "op": {"transfer": {"from": "alice", "to": "bob", "amount": 25}},
            "sig": VECTOR_SIG,
        })
    );
    let back: Tx = serde_json::from_value(json).unwrap();
    assert_eq!(back, tx);
    // postcard (wire and disk) round-trips too.
    let bytes = postcard::to_allocvec(&tx).unwrap();
    assert_eq!(postcard::from_bytes::<Tx>(&bytes).unwrap(), tx);
}

#[test]
fn tampered_transactions_are_rejected() {
    let good = vector_tx();
    let mut wrong_amount = good.clone();
    wrong_amount.op = Op::Transfer {
        from: "alice".into(),
        to: "bob".into(),
        amount: 26,
    };
    let mut wrong_seq = good.clone();
    wrong_seq.seq = 8;
    let mut wrong_sig = good.clone();
    wrong_sig.sig[10] ^= 1;
    let mut wrong_client = good.clone();
    wrong_client.client = SigningKey::from_bytes(&[9; 32]).verifying_key().to_bytes();
    for bad in [&wrong_amount, &wrong_seq, &wrong_sig, &wrong_client] {
        assert_eq!(bad.verify(), Err(TxError::BadSignature), "{bad:?}");
        assert_ne!(bad.hash(), good.hash());
    }
    // Batch verification names the first bad one.
    let key = SigningKey::from_bytes(&[3; 32]);
    let mut batch: Vec<Tx> = (1..=20)
        .map(|s| {
            Tx::sign(
                &key,
                s,
                Op::Delete {
                    key: format!("k{s}"),
                },
            )
        })
        .collect();
    assert_eq!(verify_batch(&batch), Ok(()));
    batch[13] = wrong_sig;
    assert_eq!(verify_batch(&batch), Err((13, TxError::BadSignature)));
}

#[test]
fn oversized_fields_are_rejected() {
    let key = SigningKey::from_bytes(&[4; 32]);
    let tx = Tx::sign(
        &key,
        1,
        Op::Put {
            key: "k".into(),
            value: "x".repeat(70_000),
        },
    );
    assert_eq!(tx.verify(), Err(TxError::FieldTooLarge));
}

fn genesis() -> Genesis {
    Genesis {
        balances: [("alice".to_string(), 100), ("bob".to_string(), 50)]
            .into_iter()
            .collect(),
    }
}

fn mem_store() -> (CrashBackend, Store) {
    let backend = CrashBackend::new();
    let store = Store::with_backend(backend.clone(), &genesis()).unwrap();
    (backend, store)
}

fn commit_block(store: &Store, txs: Vec<Tx>) -> Vec<Option<TxOutcome>> {
    let mut applied = store
        .commit(WriteBatch {
            blocks: vec![NewBlock {
                txs,
                certificate: None,
            }],
            ..Default::default()
        })
        .unwrap();
    applied.pop().unwrap().outcomes
}

#[test]
fn apply_put_delete_transfer_and_overdraw() {
    let (_b, store) = mem_store();
    let key = SigningKey::from_bytes(&[5; 32]);
    let put = |s, k: &str, v: &str| {
        Tx::sign(
            &key,
            s,
            Op::Put {
                key: k.into(),
                value: v.into(),
            },
        )
    };
    let out = commit_block(
        &store,
        vec![
            put(1, "color", "blue"),
            Tx::sign(
                &key,
                2,
                Op::Transfer {
                    from: "alice".into(),
                    to: "carol".into(),
                    amount: 30,
                },
            ),
            Tx::sign(
                &key,
                3,
                Op::Transfer {
                    from: "bob".into(),
                    to: "carol".into(),
                    amount: 51,
                },
            ),
            Tx::sign(
                &key,
                4,
                Op::Delete {
                    key: "color".into(),
                },
            ),
            put(5, "shape", "round"),
        ],
    );
    assert_eq!(
        out,
        vec![
            Some(TxOutcome::Ok),
            Some(TxOutcome::Ok),
            Some(TxOutcome::Error("insufficient funds".into())),
            Some(TxOutcome::Ok),
            Some(TxOutcome::Ok),
        ]
    );
    assert_eq!(store.get("color").unwrap(), None);
    assert_eq!(store.get("shape").unwrap().as_deref(), Some("round"));
    assert_eq!(store.balance("alice").unwrap(), 70);
    assert_eq!(
        store.balance("bob").unwrap(),
        50,
        "an overdraw changes nothing"
    );
    assert_eq!(store.balance("carol").unwrap(), 30);
    let rec = store
        .tx_record(&key.verifying_key().to_bytes(), 3)
        .unwrap()
        .unwrap();
    assert_eq!(rec.height, 1);
    assert_eq!(rec.outcome, TxOutcome::Error("insufficient funds".into()));
    // The overdraw result serializes as docs/SPEC.md says.
    assert_eq!(
        serde_json::to_value(&rec.outcome).unwrap(),
        serde_json::json!({"error": "insufficient funds"})
    );
}

#[test]
fn duplicate_seq_is_never_applied_twice() {
    let (_b, store) = mem_store();
    let key = SigningKey::from_bytes(&[6; 32]);
    let pay = |s| {
        Tx::sign(
            &key,
            s,
            Op::Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 10,
            },
        )
    };
    // Same tx twice in one block, then again in a later block, then an older seq.
    let out = commit_block(&store, vec![pay(1), pay(1), pay(2)]);
    assert_eq!(out, vec![Some(TxOutcome::Ok), None, Some(TxOutcome::Ok)]);
    let out = commit_block(&store, vec![pay(2), pay(1), pay(3)]);
    assert_eq!(out, vec![None, None, Some(TxOutcome::Ok)]);
    assert_eq!(store.balance("alice").unwrap(), 70);
    assert_eq!(store.balance("bob").unwrap(), 80);
    assert_eq!(
        store.last_seq(&key.verifying_key().to_bytes()).unwrap(),
        Some(3)
    );
    // The original result of seq 1 is still where the first application left it.
    assert_eq!(
        store
            .tx_record(&key.verifying_key().to_bytes(), 1)
            .unwrap()
            .unwrap()
            .height,
        1
    );
}

/// Receipts come from an in-memory index rebuilt from the blocks when the store opens: after a
/// reopen every applied transaction still has its receipt at the height it was applied, a
/// duplicate resubmitted in a later block still answers with the original, and an unknown hash
/// has none.
#[test]
fn receipts_survive_a_reopen_and_name_the_original_application() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let put = |s: u64| {
        Tx::sign(
            &key,
            s,
            Op::Put {
                key: format!("r{s}"),
                value: "v".into(),
            },
        )
    };
    let (backend, store) = mem_store();
    commit_block(&store, vec![put(1), put(2)]);
    commit_block(&store, vec![put(2), put(3)]);
    let check = |store: &Store| {
        for (s, height) in [(1, 1), (2, 1), (3, 2)] {
            let rec = store.receipt(&put(s).hash()).unwrap().unwrap();
            assert_eq!(
                (rec.height, rec.tx_hash),
                (height, put(s).hash()),
                "seq {s}"
            );
        }
        assert_eq!(store.receipt(&put(4).hash()).unwrap(), None);
    };
    check(&store);
    drop(store);
    backend.crash();
    let store = Store::with_backend(backend.clone(), &genesis()).unwrap();
    check(&store);
    commit_block(&store, vec![put(4)]);
    assert_eq!(store.receipt(&put(4).hash()).unwrap().unwrap().height, 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random transfers between a few accounts (including overdraws, self-transfers, new
    /// accounts and duplicates) never change the total.
    #[test]
    fn transfers_conserve_the_total(
        ops in prop::collection::vec((0usize..5, 0usize..5, 0u64..200, 1u64..40), 1..60),
        block_size in 1usize..8,
    ) {
        let (_b, store) = mem_store();
        let before = store.total_balance().unwrap();
        let accounts = ["alice", "bob", "carol", "dave", "erin"];
        let key = SigningKey::from_bytes(&[7; 32]);
        let txs: Vec<Tx> = ops.iter().map(|(f, t, amount, seq)| Tx::sign(&key, *seq, Op::Transfer {
            from: accounts[*f].into(), to: accounts[*t].into(), amount: *amount,
        })).collect();
        for chunk in txs.chunks(block_size) {
            commit_block(&store, chunk.to_vec());
        }
        prop_assert_eq!(store.total_balance().unwrap(), before);
        prop_assert_eq!(verify_store(&store).unwrap(), Verdict::Ok {
            height: txs.chunks(block_size).count() as u64,
            head: store.head().unwrap().hash,
        });
    }
}

#[test]
fn the_hash_chain_detects_any_altered_block() {
    let key = SigningKey::from_bytes(&[8; 32]);
    let mut prev = genesis().hash();
    let mut chain = Vec::new();
    for h in 1..=5u64 {
        let txs = vec![Tx::sign(
            &key,
            h,
            Op::Put {
                key: format!("k{h}"),
                value: "v".into(),
            },
        )];
        let b = Block::new(h, prev, txs, None);
        prev = b.hash;
        chain.push(b);
    }
    assert!(chain.iter().all(Block::hash_is_valid));
    let mut altered = chain[2].clone();
    altered.txs[0].op = Op::Put {
        key: "k3".into(),
        value: "w".into(),
    };
    assert!(!altered.hash_is_valid(), "altered tx");
    let mut altered = chain[2].clone();
    altered.height = 9;
    assert!(!altered.hash_is_valid(), "altered height");
    let mut altered = chain[2].clone();
    altered.prev_hash[0] ^= 1;
    assert!(!altered.hash_is_valid(), "altered link");
    // Recomputing the hash of an altered block breaks the link from its successor instead.
    let mut altered = chain[2].clone();
    altered.txs.clear();
    let rehashed = Block::new(altered.height, altered.prev_hash, altered.txs, None);
    assert_ne!(rehashed.hash, chain[3].prev_hash);
}

#[test]
fn reopen_after_a_crash_at_any_point_of_a_commit_keeps_the_last_whole_block() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let tx = |s: u64| {
        Tx::sign(
            &key,
            s,
            Op::Put {
                key: format!("k{s}"),
                value: "v".repeat(300),
            },
        )
    };
    // Kill a fresh run after each number of backend calls into the second commit.
    let mut outcomes = std::collections::BTreeSet::new();
    for kill_at in 0..40 {
        let backend = CrashBackend::new();
        let first_head = {
            let store = Store::with_backend(backend.clone(), &genesis()).unwrap();
            commit_block(&store, vec![tx(1), tx(2)]);
            let head = store.head().unwrap();
            backend.kill_after(kill_at);
            commit_block(&store, vec![tx(3), tx(4)]);
            head
        };
        backend.crash();
        let store = Store::with_backend(backend.clone(), &genesis())
            .unwrap_or_else(|e| panic!("reopen after kill at call {kill_at}: {e}"));
        let head = store.head().unwrap();
        match head.height {
            1 => {
                assert_eq!(head, first_head);
                assert_eq!(
                    store.get("k3").unwrap(),
                    None,
                    "torn: state of block 2 without block 2"
                );
            }
            2 => {
                assert_eq!(
                    store.get("k3").unwrap().as_deref(),
                    Some("v".repeat(300).as_str())
                );
                assert_eq!(
                    store.get("k4").unwrap().as_deref(),
                    Some("v".repeat(300).as_str())
                );
            }
            h => panic!("kill at call {kill_at}: impossible height {h}"),
        }
        assert!(matches!(verify_store(&store).unwrap(), Verdict::Ok { .. }));
        outcomes.insert(head.height);
    }
    // The sweep must have killed both before and after the commit point.
    assert_eq!(outcomes.into_iter().collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn a_store_refuses_another_clusters_genesis() {
    let backend = CrashBackend::new();
    drop(Store::with_backend(backend.clone(), &genesis()).unwrap());
    let other = Genesis::default();
    assert!(Store::with_backend(backend, &other).is_err());
}
