//! A linearizability checker for one read/write register whose writes carry unique values: the
//! Wing & Gong search with Lowe's memoisation of (linearized set, state) pairs, as in porcupine
//! and Knossos's WGL checker. One call checks one key; keys are independent objects, so a
//! history is linearizable iff each key's sub-history is (Herlihy & Wing, locality, §3.3).

use std::collections::HashSet;

/// A value id (the caller maps the unique written strings to small integers).
pub type Value = u32;

/// What an operation did to the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegKind {
    /// Wrote this value.
    Write(Value),
    /// Read this value (None: the key was absent).
    Read(Option<Value>),
}

/// One operation: invoked at `invoke`, answered at `ret` (None: never answered, so it may take
/// effect at any point after `invoke`, or not at all — Jepsen's `:info` operations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegOp {
    pub invoke: u64,
    pub ret: Option<u64>,
    pub kind: RegKind,
}

/// The checker's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search exceeded its step budget without an answer.
    Unknown,
}

const NIL: usize = usize::MAX;

/// The entry list of the search: a doubly linked list (by index) of call and return events in
/// time order, with a sentinel head at index 0, from which linearized operations are lifted.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For a call entry: its op; for a return entry: its op too.
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call entry: the index of its return entry.
    ret_of: Vec<usize>,
}

impl Entries {
    fn build(ops: &[RegOp]) -> Entries {
        // (time, 0 = call / 1 = return, op). Calls sort before returns at equal times, so ops
        // touching at an instant count as concurrent (the permissive reading).
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            events.push((o.invoke, 0, i));
            events.push((o.ret.unwrap_or(u64::MAX), 1, i));
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut e = Entries {
            next: vec![NIL; len],
            prev: vec![NIL; len],
            op: vec![NIL; len],
            is_call: vec![false; len],
            ret_of: vec![NIL; len],
        };
        let mut call_at = vec![NIL; ops.len()];
        for (k, &(_, kind, op)) in events.iter().enumerate() {
            let idx = k + 1;
            e.op[idx] = op;
            e.is_call[idx] = kind == 0;
            e.prev[idx] = idx - 1;
            e.next[idx - 1] = idx;
            if kind == 0 {
                call_at[op] = idx;
            } else {
                e.ret_of[call_at[op]] = idx;
            }
        }
        e
    }

    /// Removes a call entry and its return entry from the list.
    fn lift(&mut self, call: usize) {
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
        let r = self.ret_of[call];
        let (p, n) = (self.prev[r], self.next[r]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Puts back what [`Entries::lift`] removed (in reverse order).
    fn unlift(&mut self, call: usize) {
        let r = self.ret_of[call];
        let p = self.prev[r];
        self.next[p] = r;
        if self.next[r] != NIL {
            let n = self.next[r];
            self.prev[n] = r;
        }
        let p = self.prev[call];
        self.next[p] = call;
        let n = self.next[call];
        if n != NIL {
            self.prev[n] = call;
        }
    }
}

/// The register's sequential specification: a write sets the value, a read must return it.
fn step(state: Option<Value>, kind: RegKind) -> Option<Option<Value>> {
    match kind {
        RegKind::Write(v) => Some(Some(v)),
        RegKind::Read(r) => (r == state).then_some(state),
    }
}

/// Checks one register history starting from `initial`, giving up after `budget` search steps.
pub fn check_register(ops: &[RegOp], initial: Option<Value>, budget: u64) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    let mut e = Entries::build(ops);
    // The linearized set is memoised by a 128-bit Zobrist hash (xor of a random word per op)
    // rather than a bitset: O(1) per step and 24 bytes per cache entry, so a long history that
    // makes the search wander stays within memory. Two different sets collide with
    // probability 2^-128 per pair, far below any other source of error here.
    let zobrist: Vec<u128> = {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            // SplitMix64.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (0..ops.len())
            .map(|_| (u128::from(next()) << 64) | u128::from(next()))
            .collect()
    };
    let mut linearized = 0u128;
    let mut cache: HashSet<(u128, Option<Value>)> = HashSet::new();
    // The calls linearized so far, with the state before each.
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut state = initial;
    let mut entry = e.next[0];
    let mut steps = 0u64;
    while e.next[0] != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        if entry == NIL {
            // Cannot happen: the list ends with a return entry, handled below.
            return Verdict::NotLinearizable;
        }
        let op = e.op[entry];
        if e.is_call[entry] {
            if let Some(new_state) = step(state, ops[op].kind) {
                linearized ^= zobrist[op];
                if cache.insert((linearized, new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    e.lift(entry);
                    entry = e.next[0];
                    continue;
                }
                linearized ^= zobrist[op];
            }
            entry = e.next[entry];
        } else {
            // A return whose op is not linearized yet: every order tried so far fails here;
            // backtrack to the most recent choice.
            let Some((call, before)) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            linearized ^= zobrist[e.op[call]];
            state = before;
            e.unlift(call);
            entry = e.next[call];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    const BUDGET: u64 = 1_000_000;

    fn w(invoke: u64, ret: u64, v: Value) -> RegOp {
        RegOp {
            invoke,
            ret: Some(ret),
            kind: RegKind::Write(v),
        }
    }
    fn w_open(invoke: u64, v: Value) -> RegOp {
        RegOp {
            invoke,
            ret: None,
            kind: RegKind::Write(v),
        }
    }
    fn r(invoke: u64, ret: u64, v: Option<Value>) -> RegOp {
        RegOp {
            invoke,
            ret: Some(ret),
            kind: RegKind::Read(v),
        }
    }
    fn check(ops: &[RegOp]) -> Verdict {
        check_register(ops, None, BUDGET)
    }

    #[test]
    fn sequential_histories() {
        assert_eq!(check(&[]), Verdict::Linearizable);
        assert_eq!(
            check(&[r(0, 1, None), w(2, 3, 1), r(4, 5, Some(1))]),
            Verdict::Linearizable
        );
        // Reading the initial value after a write completed.
        assert_eq!(
            check(&[w(0, 10, 1), r(20, 30, None)]),
            Verdict::NotLinearizable
        );
        // A value nobody wrote.
        assert_eq!(
            check(&[w(0, 10, 1), r(20, 30, Some(7))]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn stale_read_after_a_newer_write_completed() {
        assert_eq!(
            check(&[w(0, 10, 1), w(20, 30, 2), r(40, 50, Some(1))]),
            Verdict::NotLinearizable
        );
        // The same read overlapping the second write may see either value.
        assert_eq!(
            check(&[w(0, 10, 1), w(20, 30, 2), r(25, 50, Some(1))]),
            Verdict::Linearizable
        );
    }

    #[test]
    fn concurrent_writes_fix_one_order() {
        let base = [w(0, 10, 1), w(0, 10, 2)];
        let ok = [base[0], base[1], r(20, 21, Some(2)), r(22, 23, Some(2))];
        assert_eq!(check(&ok), Verdict::Linearizable);
        let ok2 = [base[0], base[1], r(20, 21, Some(1)), r(22, 23, Some(1))];
        assert_eq!(check(&ok2), Verdict::Linearizable);
        // Once reads saw 1 then 2, the order is 1 < 2; seeing 1 again is impossible.
        let bad = [
            base[0],
            base[1],
            r(20, 21, Some(1)),
            r(22, 23, Some(2)),
            r(24, 25, Some(1)),
        ];
        assert_eq!(check(&bad), Verdict::NotLinearizable);
        // Concurrent reads that disagree are fine while the writes are still in flight.
        let overlapping = [
            w(0, 100, 1),
            w(0, 100, 2),
            r(10, 90, Some(2)),
            r(10, 90, Some(1)),
        ];
        assert_eq!(check(&overlapping), Verdict::Linearizable);
    }

    #[test]
    fn unanswered_writes_may_take_effect_late_or_never() {
        // Never answered, observed long after its invocation: fine.
        assert_eq!(
            check(&[w(0, 5, 1), w_open(6, 2), r(100, 101, Some(2))]),
            Verdict::Linearizable
        );
        // Never answered, never observed: fine as well (it never happened, or was overwritten).
        assert_eq!(
            check(&[
                w_open(0, 2),
                r(100, 101, None),
                w(102, 103, 1),
                r(104, 105, Some(1))
            ]),
            Verdict::Linearizable
        );
        // Once its value was read, an older value cannot come back.
        assert_eq!(
            check(&[
                w(0, 5, 1),
                w_open(6, 2),
                r(10, 11, Some(2)),
                r(12, 13, Some(1))
            ]),
            Verdict::NotLinearizable
        );
        // It cannot take effect before it was invoked.
        assert_eq!(
            check(&[r(0, 1, Some(2)), w_open(6, 2)]),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_a_verdict() {
        let ops: Vec<RegOp> = (0..10).map(|v| w(0, 100, v)).collect();
        let mut with_read = ops.clone();
        with_read.push(r(200, 201, Some(99)));
        assert_eq!(check_register(&with_read, None, 5), Verdict::Unknown);
        assert_eq!(check(&with_read), Verdict::NotLinearizable);
    }

    /// Histories generated from a real register (each op takes effect at a random instant
    /// inside its interval) are linearizable; the same history with one read's value swapped
    /// for an older overwritten one, read after the overwrite completed, is not.
    #[test]
    fn generated_histories() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for round in 0..200 {
            let mut ops = Vec::new();
            // (effect time, op index) for every op; clients run one op at a time.
            let clients = 4;
            let mut t = vec![0u64; clients];
            let mut effects: Vec<(u64, usize)> = Vec::new();
            let mut next_value = 0;
            for _ in 0..30 {
                let c = (rng.next_u64() % clients as u64) as usize;
                let invoke = t[c] + rng.next_u64() % 5;
                let ret = invoke + 1 + rng.next_u64() % 20;
                let at = invoke + rng.next_u64() % (ret - invoke);
                t[c] = ret + 1;
                let kind = if rng.next_u64() % 2 == 0 {
                    next_value += 1;
                    RegKind::Write(next_value)
                } else {
                    RegKind::Read(None)
                };
                effects.push((at * 2 + (ops.len() as u64 % 2), ops.len()));
                ops.push(RegOp {
                    invoke: invoke * 2,
                    ret: Some(ret * 2 + 1),
                    kind,
                });
            }
            // Apply the ops at their effect times to fill in what the reads saw.
            effects.sort_unstable();
            let mut state = None;
            for &(_, i) in &effects {
                match ops[i].kind {
                    RegKind::Write(v) => state = Some(v),
                    RegKind::Read(_) => ops[i].kind = RegKind::Read(state),
                }
            }
            assert_eq!(check(&ops), Verdict::Linearizable, "round {round}");
            // A read that starts after two writes completed in sequence but returns the first.
            let end = ops.iter().filter_map(|o| o.ret).max().unwrap_or(0);
            let mut bad = ops.clone();
            bad.push(w(end + 10, end + 11, 1000));
            bad.push(w(end + 12, end + 13, 1001));
            bad.push(r(end + 14, end + 15, Some(1000)));
            assert_eq!(check(&bad), Verdict::NotLinearizable, "round {round}");
        }
    }
}
