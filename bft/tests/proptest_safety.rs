//! Randomised schedules (drops, reorders, duplicates, ticks) with one silent replica: no two
//! replicas ever commit different batches at the same sequence number (PBFT safety, §4.2).

mod common;

use common::*;
use proptest::prelude::*;

fn run_schedule(ops: &[(u8, u16)], silent: u64, requests: usize) -> Cluster {
    let mut c = Cluster::with(4, |cfg| {
        cfg.max_batch = 2;
        cfg.request_timeout_ticks = 6;
        cfg.view_change_timeout_ticks = 4;
    });
    c.crash(silent);
    for (i, r) in Cluster::reqs("p", requests).iter().enumerate() {
        for id in c.live() {
            if i % 2 == 0 || id != 0 {
                let _ = c.submit(id, r);
            }
        }
    }
    for (op, idx) in ops {
        if c.queue.is_empty() {
            c.tick_all();
            continue;
        }
        let i = *idx as usize % c.queue.len();
        match op % 10 {
            // Deliver a random message (reordering).
            0..=5 => {
                let env = c.queue.remove(i).unwrap();
                c.deliver(env);
            }
            // Drop it.
            6 => {
                c.queue.remove(i);
            }
            // Duplicate it.
            7 => {
                let env = c.queue[i].clone();
                c.queue.push_back(env);
            }
            _ => c.tick_all(),
        }
        c.check_agreement();
    }
    // Then a quiet, fault-free period.
    c.run_ticks(150);
    c.check_agreement();
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_two_different_batches_at_one_seq(
        ops in proptest::collection::vec((any::<u8>(), any::<u16>()), 50..400),
        silent in 0u64..4,
        requests in 1usize..8,
    ) {
        let c = run_schedule(&ops, silent, requests);
        // Liveness after stabilisation: every request commits exactly once at every live replica.
        let mut c = c;
        // A replica that changed views alone during the chaos rejoins at the next view change,
        // which new client demand triggers (PBFT liveness needs requests to make progress).
        for id in c.live() {
            let _ = c.submit(id, b"final");
        }
        c.run_ticks(300);
        c.check_agreement();
        for id in c.live() {
            let mut all: Vec<Vec<u8>> = c.committed(id).into_iter().flat_map(|b| b.2).collect();
            all.sort();
            let mut want = Cluster::reqs("p", requests);
            want.push(b"final".to_vec());
            want.sort();
            prop_assert_eq!(all, want, "replica {}", id);
        }
    }
}

#[test]
fn liveness_after_faults_stop() {
    // A fixed nasty schedule: the primary of view 0 is silent; requests still commit.
    let ops: Vec<(u8, u16)> = (0..300u16)
        .map(|i| ((i * 7 % 11) as u8, i.wrapping_mul(31)))
        .collect();
    let c = run_schedule(&ops, 0, 5);
    for id in 1..4 {
        let total: usize = c.committed(id).iter().map(|b| b.2.len()).sum();
        assert_eq!(total, 5, "replica {id}: {:?}", c.committed(id));
    }
}
