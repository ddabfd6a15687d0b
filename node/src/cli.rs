//! The `faultline` command line (docs/SPEC.md "Binary and commands"). Errors reach the user as one
//! sentence on stderr with a non-zero exit code, never as a panic.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::ByzantineSpec;
use crate::config::{Protocol, Timing};
use crate::{keys, testnet, verify};

use crate::sim::Outcome;

/// The exit code of a run's outcome, the one place that numbers them (`sim`, `local`, `nemesis`;
/// docs/SPEC.md): 0 ok, 3 a safety violation, 4 stalled after the faults stopped, 5 a message
/// over the size budget.
pub fn exit_code(v: Outcome) -> ExitCode {
    ExitCode::from(match v {
        Outcome::Ok => 0,
        Outcome::Unsafe => 3,
        Outcome::Stalled => 4,
        Outcome::Oversized => 5,
    })
}

/// The outcome of a run that only checks safety (`local`, `nemesis`).
fn safety(safe: bool) -> Outcome {
    if safe {
        Outcome::Ok
    } else {
        Outcome::Unsafe
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "faultline",
    version,
    about = "A consensus node: crash-fault Raft or signed-message PBFT over libp2p, replicating one ordered ledger of signed client transactions.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new ed25519 secret key (64 hex chars, mode 0600) and print its PeerId and public key.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long, default_value = "node.key")]
        out: PathBuf,
    },
    /// Write cluster.toml, node-<i>/node.toml, node-<i>/node.key and client-<j>.key for a cluster.
    Testnet {
        /// Consensus protocol of the cluster.
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// Number of nodes (raft: at least 1; pbft: at least 4 = 3f+1 with f = 1).
        #[arg(long)]
        nodes: usize,
        /// Directory to write into (must not already hold a cluster.toml).
        #[arg(long)]
        dir: PathBuf,
        /// IP address the nodes listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// One address per node, comma separated (IP0,IP1,...): a cluster across hosts, node i
        /// at IPi with libp2p on port P and the HTTP API on P+1. Overrides --host.
        #[arg(long, value_delimiter = ',', value_name = "IP0,IP1,...")]
        hosts: Vec<IpAddr>,
        /// First port: node i uses P+i for libp2p and P+N+i for its HTTP API (with --hosts,
        /// every node uses P and P+1).
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Number of client keys to create (each is a permitted writer).
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Number of admin keys to create (admin-<j>.key, listed as [[admin]] in cluster.toml;
        /// they sign `faultline admin` operations).
        #[arg(long, default_value_t = 0)]
        admins: usize,
        /// Make node I run a misbehaviour: I=MODE with MODE one of silent, equivocate, forge,
        /// corrupt, ack-without-store, disrupt. Repeatable.
        #[arg(long, value_name = "I=MODE")]
        byzantine: Vec<ByzantineSpec>,
    },
    /// Run one node until SIGINT/SIGTERM; a restart with the same config recovers from its data dir.
    Run {
        /// The node's node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Local IP to bind the p2p and API listeners on (e.g. 0.0.0.0), with the ports from
        /// cluster.toml; default: the node's own addresses there. For hosts whose cluster
        /// address is not a local interface (NAT, containers).
        #[arg(long, value_name = "IP")]
        listen: Option<IpAddr>,
        /// Test clusters only: serve POST /v1/admin/partition to loopback clients, which cuts
        /// the node off from the peers it names (`faultline local --ui` uses it).
        #[arg(long, hide = true)]
        allow_partition: bool,
    },
    /// Administer a running cluster with an admin key (one listed under [[admin]] in
    /// cluster.toml): see the member set, move Raft leadership.
    Admin {
        /// The cluster's cluster.toml.
        #[arg(long)]
        cluster: PathBuf,
        /// The admin's secret key file (default: admin-0.key next to cluster.toml).
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(subcommand)]
        command: crate::client::admin::AdminCommand,
    },
    /// Submit signed transactions to a cluster or query its nodes.
    Client {
        /// The cluster's cluster.toml.
        #[arg(long)]
        cluster: PathBuf,
        /// The client's secret key file (default: client-0.key next to cluster.toml).
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(subcommand)]
        command: crate::client::ClientCommand,
    },
    /// Deterministic simulation of the real protocol code on a simulated network, clock and disk.
    /// Prints one line per seed (JSON lines with --json) and a summary; exit 3 if any seed saw a
    /// safety violation, 5 if a node produced a message over the size budget, 4 if one stalled
    /// after the faults stopped.
    Sim {
        #[arg(long, value_enum)]
        protocol: Protocol,
        #[arg(long)]
        nodes: usize,
        /// Seeds to run: A..B (inclusive) or a single seed.
        #[arg(long, default_value = "1..20", value_parser = parse_seeds)]
        seeds: SeedRange,
        /// Make node I run a misbehaviour (I=MODE). Repeatable.
        #[arg(long, value_name = "I=MODE")]
        byzantine: Vec<ByzantineSpec>,
        /// Crash and restart nodes (at most f at a time, from what they had fsynced).
        #[arg(long)]
        crash: bool,
        /// Partition the network into two random sides now and then.
        #[arg(long)]
        partition: bool,
        /// Probability of dropping each message (half of it: duplicating) during the faults.
        #[arg(long, default_value_t = 0.0)]
        drop: f64,
        /// Length of the fault phase in ticks of 10 ms simulated time (then 6 s without faults).
        #[arg(long, default_value_t = 1000)]
        steps: u64,
        /// Simulated clients, each with its own signing key.
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// The size budget of every message; the simulated network refuses larger ones.
        #[arg(long, default_value_t = crate::config::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: usize,
        /// The large-message workload: a quarter of the operations put 16–60 KB values.
        #[arg(long)]
        large_values: bool,
        /// One JSON object per seed instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// A whole cluster on this machine (child processes over libp2p on loopback) with a client
    /// workload and the faults asked for; prints one summary row. Exit 0 safe, 3 unsafe.
    Local {
        /// Consensus protocol of the cluster.
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// Number of nodes (default: 3 for raft, 4 for pbft).
        #[arg(long)]
        nodes: Option<usize>,
        /// Seconds of client workload.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Target transactions per second over all clients (default: as fast as acknowledged).
        #[arg(long)]
        rate: Option<f64>,
        /// Concurrent workload clients, each with its own key.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Make node I run a misbehaviour (I=MODE; MODE: silent, equivocate, forge, corrupt,
        /// ack-without-store, disrupt). Repeatable. A Byzantine raft node is made the leader.
        #[arg(long, value_name = "I=MODE")]
        byzantine: Vec<ByzantineSpec>,
        /// Kill -9 node I (or `leader`, whoever leads then) SECS into the workload. Repeatable.
        #[arg(long, value_name = "I@SECS")]
        crash: Vec<crate::local::FaultAt>,
        /// Restart node I (or `leader`, the node crashed as leader) SECS into the workload.
        #[arg(long, value_name = "I@SECS")]
        restart: Vec<crate::local::FaultAt>,
        /// Directory for the testnet and node logs (kept); default: a temporary one (removed).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print one JSON object instead of a table row.
        #[arg(long)]
        json: bool,
        /// Jepsen-style run instead of the benchmark workload: clients doing transfers, puts
        /// and reads that retry across nodes, while a nemesis kills -9, restarts, SIGSTOPs and
        /// SIGCONTs up to f nodes every 1–2 s for --duration seconds; then every fault is
        /// healed and the ledger, the data dirs and the reads' linearizability are checked.
        /// Prints what it checked; exit 3 on a violation.
        #[arg(long, conflicts_with_all = ["byzantine", "crash", "restart", "rate"])]
        nemesis: bool,
        /// Seed of the nemesis schedule and the client workload (default: from the clock).
        #[arg(long, requires = "nemesis")]
        seed: Option<u64>,
        /// Serve the live web view on ADDR (default 127.0.0.1:8080) and run until Ctrl-C with a
        /// paced workload (--rate, default 100 tx/s) instead of --duration; the page can kill -9,
        /// restart, partition and make Byzantine any node. Prints the safety audit on exit.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080",
              conflicts_with_all = ["nemesis", "crash", "restart", "json"])]
        ui: Option<std::net::SocketAddr>,
    },
    /// Serve the live web view of a running cluster (read-only: no controls) until Ctrl-C.
    Ui {
        /// The cluster's cluster.toml.
        #[arg(long)]
        cluster: PathBuf,
        /// Address to serve the page on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// The showcase, under two minutes: a 4-node PBFT and a 3-node Raft cluster as real
    /// processes, each run normally, with its leader/primary crashed and restarted, and with an
    /// equivocating leader/primary; then every Byzantine mode against both protocols in the
    /// simulator, and two colluding PBFT replicas of four (f+1) forking the ledger. Prints the
    /// tables with the safety verdicts and writes report.html (tables and charts in one file).
    Demo {
        /// Keep every scenario's testnet and logs under DIR, and write DIR/report.html (default:
        /// runs in temporary dirs, removed; report.html in the working directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Throughput, latency and messages per committed tx/batch for each cluster size; writes
    /// OUT/results.csv, messages_per_tx.svg, throughput.svg and latency.svg. With --sim, counts
    /// messages per committed batch with the real engines in the simulator instead (no
    /// processes, so n can reach 64): OUT/sim_results.csv, sim_messages_per_batch.svg and
    /// sim_messages_per_batch_log.svg.
    Bench {
        /// raft, pbft or both.
        #[arg(long, value_enum, default_value = "both")]
        protocol: BenchProtocol,
        /// Cluster sizes, comma separated (e.g. 3,4,7,10); sizes below a protocol's minimum are skipped.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<usize>,
        /// Seconds of saturating workload per run (default 10); with --sim, simulated seconds
        /// per run (default 2).
        #[arg(long)]
        duration: Option<f64>,
        /// Count messages in the simulator instead of running processes.
        #[arg(long)]
        sim: bool,
        /// Concurrent workload clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Transactions per request, each client waiting for its answer before the next;
        /// 1 sends each transaction on its own to POST /v1/tx (a single-write client's latency).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        batch: u64,
        /// Bytes of each transaction's value.
        #[arg(long, default_value_t = 16)]
        payload: usize,
        /// Output directory.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
    },
    /// Offline audit of one node's data dir: hash chain, client signatures, commit certificates.
    Verify {
        /// The node's data dir (node.toml's data_dir).
        #[arg(long)]
        data: PathBuf,
        /// Accept a chain that does not start at height 1 (exit 0 with `partial ...`).
        #[arg(long)]
        allow_partial: bool,
    },
}

/// `--protocol` of `bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProtocol {
    Raft,
    Pbft,
    Both,
}

/// A positive, finite number of seconds.
fn seconds(secs: f64) -> Result<std::time::Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        anyhow::bail!("--duration must be a positive number of seconds, got {secs}");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already holds
/// (several error types print their source inline).
fn one_sentence(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Plain text when stderr is a log file (`faultline run 2>node.log`).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Inclusive seed range of `faultline sim`.
#[derive(Clone, Copy, Debug)]
pub struct SeedRange {
    pub first: u64,
    pub last: u64,
}

fn parse_seeds(s: &str) -> Result<SeedRange, String> {
    let parse = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("{t:?} is not a seed number"))
    };
    let (first, last) = match s.split_once("..") {
        Some((a, b)) => (parse(a)?, parse(b.trim_start_matches('='))?),
        None => (parse(s)?, parse(s)?),
    };
    if last < first {
        return Err(format!("empty seed range {s}"));
    }
    Ok(SeedRange { first, last })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Sim {
            protocol,
            nodes,
            seeds,
            byzantine,
            crash,
            partition,
            drop,
            steps,
            clients,
            max_message_bytes,
            large_values,
            json,
        } => {
            if !(0.0..=1.0).contains(&drop) {
                anyhow::bail!("--drop must be a probability between 0 and 1, got {drop}");
            }
            let f = protocol.max_faults(nodes);
            if protocol == Protocol::Pbft && byzantine.len() > f {
                eprintln!(
                    "warning: {} Byzantine nodes exceed f = {f} for n = {nodes}: PBFT promises \
                     neither agreement nor progress here",
                    byzantine.len()
                );
            }
            let base = crate::sim::SimConfig {
                byzantine,
                crash,
                partition,
                drop,
                steps,
                clients,
                max_message_bytes,
                large_values,
                ..crate::sim::SimConfig::new(protocol, nodes, 0)
            };
            let outcome = crate::sim::sweep::run_sweep(&base, seeds.first, seeds.last, json)?;
            Ok(exit_code(outcome))
        }
        Command::Local {
            protocol,
            nodes,
            duration,
            rate,
            clients,
            byzantine,
            crash,
            restart,
            dir,
            json,
            nemesis,
            seed,
            ui,
        } => {
            let n = nodes.unwrap_or(match protocol {
                Protocol::Raft => 3,
                Protocol::Pbft => 4,
            });
            if nemesis {
                let mut spec = crate::nemesis::NemesisSpec::new(protocol, seconds(duration)?);
                spec.nodes = n;
                spec.clients = clients.max(1);
                spec.dir = dir;
                spec.seed = seed.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_secs())
                });
                let ok = crate::nemesis::local(spec, json)?;
                return Ok(exit_code(safety(ok)));
            }
            if let Some(r) = rate {
                if !(r.is_finite() && r > 0.0) {
                    anyhow::bail!(
                        "--rate must be a positive number of transactions per second, got {r}"
                    );
                }
            }
            let mut sc = crate::local::Scenario::new(protocol, n, seconds(duration)?);
            sc.name = "local".into();
            sc.rate = rate;
            sc.clients = clients.max(1);
            sc.byzantine = byzantine;
            sc.crash = crash;
            sc.restart = restart;
            sc.dir = dir;
            let safe = match ui {
                Some(addr) => {
                    crate::ui::local::run(sc, addr, rate.unwrap_or(crate::ui::local::DEFAULT_RATE))?
                }
                None => crate::local::local(sc, json)?,
            };
            Ok(exit_code(safety(safe)))
        }
        Command::Ui { cluster, listen } => {
            crate::ui::watch_cluster(&cluster, listen)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir } => {
            crate::demo::demo(dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            protocol,
            nodes,
            duration,
            sim,
            clients,
            batch,
            payload,
            out,
        } => {
            let protocols = match protocol {
                BenchProtocol::Raft => vec![Protocol::Raft],
                BenchProtocol::Pbft => vec![Protocol::Pbft],
                BenchProtocol::Both => vec![Protocol::Raft, Protocol::Pbft],
            };
            if sim {
                crate::bench::bench_sim(
                    &protocols,
                    &nodes,
                    seconds(duration.unwrap_or(2.0))?,
                    &out,
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            crate::bench::bench(&crate::bench::BenchSpec {
                protocols,
                nodes,
                duration: seconds(duration.unwrap_or(10.0))?,
                clients,
                batch: batch as usize,
                payload,
                out,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let key = keys::generate()?;
            keys::write_key(&out, &key)?;
            let public = key.verifying_key().to_bytes();
            outln!(
                "peer_id={} public_key={}",
                keys::peer_id(&public)?,
                hex::encode(public)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Testnet {
            protocol,
            nodes,
            dir,
            host,
            hosts,
            base_port,
            clients,
            admins,
            byzantine,
        } => {
            let path = testnet::write(&testnet::TestnetSpec {
                protocol,
                nodes,
                dir,
                host,
                hosts,
                base_port,
                clients,
                admins,
                byzantine,
                timing: Timing::default(),
            })?;
            outln!(
                "wrote {} ({protocol}, {nodes} nodes, {clients} client keys)",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            listen,
            allow_partition,
        } => {
            crate::runtime::run(&config, listen, allow_partition)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Client {
            cluster,
            key,
            command,
        } => {
            crate::client::run(&cluster, key, command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            cluster,
            key,
            command,
        } => {
            crate::client::admin::run(&cluster, key, command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            data,
            allow_partial,
        } => {
            let verdict = verify::verify_dir(&data)
                .with_context(|| format!("cannot audit {}", data.display()))?;
            match verdict {
                verify::Verdict::Ok { height, head } => {
                    outln!("ok height={height} head={}", hex::encode(head));
                    Ok(ExitCode::SUCCESS)
                }
                verify::Verdict::Partial {
                    first,
                    height,
                    head,
                } => {
                    outln!(
                        "partial first={first} height={height} head={}",
                        hex::encode(head)
                    );
                    Ok(if allow_partial {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                verify::Verdict::Bad { height, reason } => {
                    outln!("bad height={height}: {reason}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
