//! Runs many seeds on all cores and prints their reports in seed order (so the output of a sweep
//! is as reproducible as each seed).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use super::{run, Outcome, SimConfig, SimError, SimReport};

/// Runs seeds `first..=last` of `base`, prints one line (or JSON object) per seed and a summary
/// line; returns the worst [`Outcome`].
pub fn run_sweep(base: &SimConfig, first: u64, last: u64, json: bool) -> Result<Outcome, SimError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicU64::new(first);
    // Set when stdout is gone (e.g. piped into `head`): stop quietly instead of panicking.
    let closed = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(u64, Result<SimReport, SimError>)>();
    // ok, unsafe, stalled, oversized
    let mut counts = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, closed) = (&next, &closed);
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed > last || closed.load(Ordering::SeqCst) {
                    return;
                }
                let cfg = SimConfig {
                    seed,
                    ..base.clone()
                };
                if tx.send((seed, run(cfg))).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut expect = first;
        let mut out = std::io::stdout().lock();
        for (seed, result) in rx {
            pending.insert(seed, result);
            while let Some(result) = pending.remove(&expect) {
                match result {
                    Ok(report) => {
                        let line = if json {
                            serde_json::to_string(&report).unwrap_or_default()
                        } else {
                            report.line()
                        };
                        if writeln!(out, "{line}").is_err() {
                            closed.store(true, Ordering::SeqCst);
                        }
                        match report.verdict() {
                            Outcome::Ok => counts.0 += 1,
                            Outcome::Unsafe => counts.1 += 1,
                            Outcome::Oversized => counts.3 += 1,
                            Outcome::Stalled => counts.2 += 1,
                        }
                    }
                    Err(e) => {
                        if first_error.is_none() {
                            first_error = Some(e);
                        }
                    }
                }
                expect += 1;
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    if !json && !closed.load(Ordering::SeqCst) {
        let _ = writeln!(
            std::io::stdout(),
            "summary: seeds={} ok={} unsafe={} stalled={} oversized={}",
            last - first + 1,
            counts.0,
            counts.1,
            counts.2,
            counts.3
        );
    }
    Ok(if counts.1 > 0 {
        Outcome::Unsafe
    } else if counts.3 > 0 {
        Outcome::Oversized
    } else if counts.2 > 0 {
        Outcome::Stalled
    } else {
        Outcome::Ok
    })
}
