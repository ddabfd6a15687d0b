//! The CI smoke run of the fuzz targets (`fuzz/`): every decoder that sees untrusted bytes gets
//! its seed corpus of real traffic and mutations of it (bit flips, overwrites, truncations,
//! splices, random tails). Any panic fails the test. Iterations per target scale with
//! `FAULTLINE_FUZZ_ITERS` (default 1,500); long coverage-guided runs use `cargo fuzz` (README).
//! `FAULTLINE_WRITE_CORPUS=DIR` writes the seeds to `DIR/<target>/` for `cargo fuzz`.

use faultline_node::config::Protocol;
use faultline_node::fuzzing;

fn iters() -> usize {
    std::env::var("FAULTLINE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500)
}

/// xorshift64*: deterministic, so a failure reproduces from the iteration number.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => d.truncate(rng.below(d.len() + 1)),
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(d.len() + 1);
                let from = rng.below(other.len() + 1);
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            4 => {
                // Interesting integers where lengths and varints live.
                if !d.is_empty() {
                    let i = rng.below(d.len());
                    d[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
                }
            }
            _ => {
                for _ in 0..rng.below(16) {
                    d.push(rng.next() as u8);
                }
            }
        }
    }
    d
}

fn smoke(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    if let Ok(dir) = std::env::var("FAULTLINE_WRITE_CORPUS") {
        let dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:04}")), s).unwrap();
        }
    }
    for s in &seeds {
        target(s);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for _ in 0..iters() {
        target(&mutate(&mut rng, &seeds));
    }
    for len in [0, 1, 7, 64, 1000] {
        let random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        target(&random);
    }
}

#[test]
fn raft_messages() {
    smoke(
        "raft_message",
        fuzzing::seed_messages(Protocol::Raft),
        |d| fuzzing::engine_message(Protocol::Raft, d),
    );
}

#[test]
fn pbft_messages() {
    smoke(
        "pbft_message",
        fuzzing::seed_messages(Protocol::Pbft),
        |d| fuzzing::engine_message(Protocol::Pbft, d),
    );
}

#[test]
fn api_bodies() {
    smoke("api_body", fuzzing::seed_api_bodies(), fuzzing::api_body);
}

#[test]
fn config_texts() {
    smoke(
        "config_text",
        fuzzing::seed_config_texts(),
        fuzzing::config_text,
    );
}

#[test]
fn net_frames() {
    smoke("net_frames", fuzzing::seed_frames(), |d| {
        let frames = faultline_net::read_frames(d, 1 << 20);
        assert!(frames.iter().all(|f| f.len() <= 1 << 20));
    });
}

#[test]
fn the_seeds_are_real_traffic() {
    // Both engines produced messages of several kinds, so mutations start from deep states.
    for p in [Protocol::Raft, Protocol::Pbft] {
        let seeds = fuzzing::seed_messages(p);
        assert!(seeds.len() >= 20, "{p}: only {} seed messages", seeds.len());
    }
}
