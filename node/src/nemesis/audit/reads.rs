//! The read checks: every key's reads and writes checked for linearizability (WGL), stale
//! reads counted by the ledger's order of puts, and reads of values never applied.

use std::collections::{HashMap, HashSet};

use super::{Check, Replay};
use crate::nemesis::history::{Op, OpKind, Outcome};
use crate::nemesis::linearizability::{check_register, RegKind, RegOp, Verdict};

/// Search steps the linearizability checker may take per key.
const WGL_BUDGET: u64 = 5_000_000;

/// What the read checks found.
pub struct ReadFindings {
    pub checks: Vec<Check>,
    /// Reads that returned a value older than one whose write had completed before the read
    /// began (by the ledger's order of that key's puts).
    pub stale: usize,
    pub reads: usize,
}

/// Checks every key's reads and writes for linearizability (WGL) and counts stale reads;
/// `strict` decides whether a non-linearizable key is a violation or a known finding.
pub fn check_reads(
    ops: &[Op],
    r: &Replay,
    keys: &[String],
    strict: bool,
    why: &str,
) -> ReadFindings {
    let mut verdicts = Vec::new();
    let mut bad = Vec::new();
    let mut phantom = Vec::new();
    let mut stale = 0;
    let mut reads = 0;
    for key in keys {
        let order: HashMap<&str, usize> = r
            .puts
            .get(key)
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, s)| (s.as_str(), i + 1))
                    .collect()
            })
            .unwrap_or_default();
        let observed: HashSet<&str> = ops
            .iter()
            .filter_map(|o| match (&o.kind, &o.outcome) {
                (OpKind::Read { key: k }, Outcome::Read(Some(v))) if k == key => Some(v.as_str()),
                _ => None,
            })
            .collect();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut id = |v: &str| {
            let next = ids.len() as u32;
            *ids.entry(v.to_string()).or_insert(next)
        };
        let mut reg = Vec::new();
        // (ack time, ledger position) of acknowledged puts, for the stale-read count.
        let mut acked: Vec<(u64, usize)> = Vec::new();
        for op in ops {
            match (&op.kind, &op.outcome) {
                (OpKind::Put { key: k, value }, Outcome::Committed { .. }) if k == key => {
                    reg.push(RegOp {
                        invoke: op.invoke_ns,
                        ret: op.complete_ns,
                        kind: RegKind::Write(id(value)),
                    });
                    if let (Some(t), Some(p)) = (op.complete_ns, order.get(value.as_str())) {
                        acked.push((t, *p));
                    }
                }
                // An unanswered put stays open forever, unless it cannot matter: one the
                // ledger never applied never took effect, and one no read observed can be
                // dropped (any linearization keeps working with it removed, and one without
                // it extends by placing it last) — which keeps the search small.
                (OpKind::Put { key: k, value }, Outcome::Unknown(_))
                    if k == key
                        && order.contains_key(value.as_str())
                        && observed.contains(value.as_str()) =>
                {
                    reg.push(RegOp {
                        invoke: op.invoke_ns,
                        ret: None,
                        kind: RegKind::Write(id(value)),
                    })
                }
                (OpKind::Read { key: k }, Outcome::Read(v)) if k == key => {
                    reads += 1;
                    if let Some(v) = v {
                        if !order.contains_key(v.as_str()) {
                            phantom
                                .push(format!("{key}: read {v:?}, which the ledger never applied"));
                        }
                    }
                    reg.push(RegOp {
                        invoke: op.invoke_ns,
                        ret: op.complete_ns,
                        kind: RegKind::Read(v.as_deref().map(&mut id)),
                    });
                }
                _ => {}
            }
        }
        // Stale: an acknowledged put later in the ledger completed before this read began.
        acked.sort_unstable();
        let mut newest_by = Vec::with_capacity(acked.len());
        let mut best = 0;
        for &(t, p) in &acked {
            best = best.max(p);
            newest_by.push((t, best));
        }
        for op in ops {
            let (OpKind::Read { key: k }, Outcome::Read(v)) = (&op.kind, &op.outcome) else {
                continue;
            };
            if k != key {
                continue;
            }
            let p = v
                .as_deref()
                .and_then(|v| order.get(v))
                .copied()
                .unwrap_or(0);
            let idx = newest_by.partition_point(|(t, _)| *t < op.invoke_ns);
            if idx > 0 && newest_by[idx - 1].1 > p {
                stale += 1;
            }
        }
        let n_ops = reg.len();
        let verdict = check_register(&reg, None, WGL_BUDGET);
        verdicts.push(format!("{key}: {n_ops} ops {verdict:?}"));
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                bad.push(format!("{key} ({n_ops} ops) is not linearizable"))
            }
            Verdict::Unknown => bad.push(format!(
                "{key} ({n_ops} ops): the search gave up after {WGL_BUDGET} steps"
            )),
        }
    }
    let mut lin = Check::new(
        "reads linearizable per key (WGL register checker)",
        &bad,
        verdicts.join(", "),
        strict,
    );
    if !bad.is_empty() && !strict {
        lin.detail = format!("{} [known: {why}]", lin.detail);
    }
    let mut stale_check = Check::new(
        "no stale reads (by the ledger's order of puts)",
        &if stale > 0 {
            vec![format!(
                "{stale} of {reads} reads returned an overwritten value"
            )]
        } else {
            vec![]
        },
        format!("{reads} reads"),
        strict,
    );
    if stale > 0 && !strict {
        stale_check.detail = format!("{} [known: {why}]", stale_check.detail);
    }
    ReadFindings {
        checks: vec![
            lin,
            stale_check,
            Check::new(
                "reads return only applied values",
                &phantom,
                format!("{reads} reads"),
                true,
            ),
        ],
        stale,
        reads,
    }
}
