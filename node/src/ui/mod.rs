//! The live web view (`faultline local … --ui`, `faultline ui --cluster FILE`): one
//! self-contained page (HTML, CSS and JS compiled into the binary, nothing fetched from
//! elsewhere) that polls `GET /api/state` twice a second. The state is built here from what the
//! nodes themselves publish — `/v1/status` and `/metrics` of every node, polled every
//! [`POLL`] — so tests read exactly the data the page shows.
//!
//! Controls (kill -9, restart, Byzantine mode, partition) exist only when a [`Controls`] channel
//! is given, i.e. in `local`, which owns the node processes; `faultline ui` watches a cluster it
//! does not own and only observes.

pub mod local;
pub mod metrics_text;
mod poll;
mod routes;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ByzantineMode;
use crate::config::{ClusterConfig, Protocol};
use metrics_text::NodeMetrics;

/// How often every node is polled (the page polls the view at the same rate).
pub const POLL: Duration = Duration::from_millis(500);
/// Samples of the tx/s and latency series kept (two minutes).
const SERIES_LEN: usize = 240;
/// Timeline entries kept.
const TIMELINE_LEN: usize = 200;
/// Per-request timeout towards a node: a stopped (SIGSTOP) or partitioned node must not hold
/// up the view of the others.
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Header the page sends with every control request. A cross-site form or image on another
/// web page cannot set a custom header without a CORS preflight, which this server never
/// grants, so a page the user happens to visit cannot kill the cluster's nodes.
pub const CONTROL_HEADER: &str = "x-faultline-ui";

const PAGE: &str = include_str!("page.html");

/// What a control button asks `local` to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Restart,
    /// Restart with `byzantine = MODE` in node.toml, or honest again with None.
    Byzantine(Option<ByzantineMode>),
    /// Cut the node off from every other node (both sides refuse each other).
    Partition,
    Heal,
}

impl Action {
    fn name(&self) -> String {
        match self {
            Action::Kill => "kill -9".into(),
            Action::Restart => "restart".into(),
            Action::Byzantine(Some(m)) => format!("byzantine {}", m.name()),
            Action::Byzantine(None) => "honest".into(),
            Action::Partition => "partition".into(),
            Action::Heal => "heal".into(),
        }
    }
}

/// One control request; `reply` gets a sentence for the timeline or an error.
pub struct ControlRequest {
    pub node: usize,
    pub action: Action,
    pub reply: oneshot::Sender<Result<String, String>>,
}

pub type Controls = mpsc::Sender<ControlRequest>;

/// What `local` knows about a node's process (absent in `faultline ui`).
// The structs the page reads declare their fields in alphabetical order: `/api/state` was
// built as a serde_json map, which sorts keys at every level, and this keeps its bytes as
// they were (`the_state_comes_out_with_sorted_keys` checks it).

#[derive(Clone, Debug, Default, Serialize)]
pub struct Process {
    pub byzantine: Option<ByzantineMode>,
    pub partitioned: bool,
    pub running: bool,
}

/// One node as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
struct NodeView {
    api: String,
    /// Its block at the compared height differs from the correct majority's.
    diverged: bool,
    head_hash: String,
    height: u64,
    id: u64,
    leader: Option<u64>,
    peers_connected: u64,
    peers_unreachable: Vec<u64>,
    /// From `local`: running, Byzantine mode, partitioned (null in `faultline ui`).
    process: Option<Process>,
    role: Option<String>,
    term: Option<u64>,
    tx_per_s: f64,
    /// Answered its last `/v1/status`.
    up: bool,
    view: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
struct PairRate {
    by_type: BTreeMap<String, f64>,
    from: u64,
    to: u64,
    total: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Point {
    height: u64,
    latency_mean_ms: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    t: f64,
    tx_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Event {
    kind: String,
    node: Option<u64>,
    t: f64,
    text: String,
}

#[derive(Clone, Debug, Serialize)]
struct Verdict {
    /// The height the latest comparison was made at.
    compared_height: u64,
    /// The height at which two correct nodes were first seen holding different blocks.
    diverged_at: Option<u64>,
    safe: bool,
    text: String,
}

/// `GET /api/state`: everything the page shows (docs/SPEC.md "Live view").
#[derive(Serialize)]
pub struct StateView {
    controls: bool,
    f: usize,
    leader: Option<u64>,
    messages: Messages,
    modes: Vec<&'static str>,
    n: usize,
    nodes: Vec<NodeView>,
    polls: u64,
    protocol: Protocol,
    series: VecDeque<Point>,
    t: f64,
    timeline: VecDeque<Event>,
    verdict: Verdict,
}

/// Message rates between every pair of nodes, and every type seen.
#[derive(Serialize)]
struct Messages {
    pairs: Vec<PairRate>,
    types: BTreeSet<String>,
}

struct ViewState {
    nodes: Vec<NodeView>,
    prev: Vec<Option<(Instant, NodeMetrics)>>,
    pairs: Vec<PairRate>,
    types: BTreeSet<String>,
    series: VecDeque<Point>,
    timeline: VecDeque<Event>,
    verdict: Verdict,
    leader: Option<u64>,
    polls: u64,
}

/// The view: its state, the nodes it polls, and the optional controls.
pub struct Ui {
    protocol: Protocol,
    f: usize,
    nodes: Vec<(u64, SocketAddr)>,
    controls: Option<Controls>,
    started: Instant,
    http: reqwest::Client,
    state: Mutex<ViewState>,
    processes: Mutex<Vec<Option<Process>>>,
}

impl Ui {
    pub fn new(cluster: &ClusterConfig, controls: Option<Controls>) -> anyhow::Result<Arc<Ui>> {
        let nodes: Vec<(u64, SocketAddr)> = cluster.nodes.iter().map(|n| (n.id, n.api)).collect();
        let http = reqwest::Client::builder()
            .timeout(NODE_TIMEOUT)
            .pool_max_idle_per_host(4)
            .build()?;
        let views = nodes
            .iter()
            .map(|&(id, api)| NodeView {
                id,
                api: api.to_string(),
                ..NodeView::default()
            })
            .collect();
        let n = nodes.len();
        Ok(Arc::new(Ui {
            protocol: cluster.protocol,
            f: cluster.f,
            controls,
            started: Instant::now(),
            http,
            state: Mutex::new(ViewState {
                nodes: views,
                prev: vec![None; n],
                pairs: Vec::new(),
                types: BTreeSet::new(),
                series: VecDeque::new(),
                timeline: VecDeque::new(),
                verdict: Verdict {
                    safe: true,
                    text: "no divergence seen yet".into(),
                    diverged_at: None,
                    compared_height: 0,
                },
                leader: None,
                polls: 0,
            }),
            processes: Mutex::new(vec![None; n]),
            nodes,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Adds an entry to the timeline.
    pub fn event(&self, kind: &str, node: Option<u64>, text: impl Into<String>) {
        let t = self.t();
        let mut st = self.lock();
        st.timeline.push_back(Event {
            t,
            kind: kind.into(),
            node,
            text: text.into(),
        });
        while st.timeline.len() > TIMELINE_LEN {
            st.timeline.pop_front();
        }
    }

    /// `local` reports what it did to node `i`'s process.
    pub fn set_process(&self, i: usize, p: Process) {
        let mut ps = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = ps.get_mut(i) {
            *slot = Some(p);
        }
    }

    /// The leader/primary most answering nodes name, if that node answers too.
    pub fn leader(&self) -> Option<u64> {
        self.lock().leader
    }

    /// The page's data, as served at `GET /api/state`.
    pub fn state(&self) -> StateView {
        let processes = self
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let st = self.lock();
        let mut nodes = st.nodes.clone();
        for (v, p) in nodes.iter_mut().zip(processes) {
            v.process = p;
        }
        StateView {
            controls: self.controls.is_some(),
            f: self.f,
            leader: st.leader,
            messages: Messages {
                pairs: st.pairs.clone(),
                types: st.types.clone(),
            },
            modes: ByzantineMode::ALL.iter().map(|m| m.name()).collect(),
            n: self.nodes.len(),
            nodes,
            polls: st.polls,
            protocol: self.protocol,
            series: st.series.clone(),
            t: self.t(),
            timeline: st.timeline.clone(),
            verdict: st.verdict.clone(),
        }
    }

    fn is_byzantine(&self, i: usize) -> bool {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(i)
            .and_then(|p| p.as_ref())
            .is_some_and(|p| p.byzantine.is_some())
    }
}

/// `faultline ui --cluster FILE [--listen ADDR]`: watches a running cluster until Ctrl-C.
pub fn watch_cluster(cluster_path: &std::path::Path, listen: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context;
    let cluster = ClusterConfig::load(cluster_path)
        .with_context(|| format!("cannot load {}", cluster_path.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let ui = Ui::new(&cluster, None)?;
        ui.event(
            "start",
            None,
            format!(
                "watching {} ({} nodes, {})",
                cluster_path.display(),
                cluster.nodes.len(),
                cluster.protocol
            ),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        outln!("faultline ui: http://{listen}/ (Ctrl-C to stop)");
        let server = tokio::spawn(ui.serve(listener, stop_rx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The view's JSON is typed now; its bytes must stay those of the sorted JSON map it used
    /// to be built as, at every level, with every kind of entry present.
    #[test]
    fn the_state_comes_out_with_sorted_keys() {
        let cluster = crate::sim::sim_cluster(Protocol::Pbft, 4, 1).unwrap();
        let ui = Ui::new(&cluster, None).unwrap();
        ui.event("start", Some(1), "hello");
        ui.set_process(
            0,
            Process {
                byzantine: Some(ByzantineMode::Forge),
                partitioned: true,
                running: true,
            },
        );
        {
            let mut st = ui.lock();
            st.pairs.push(PairRate {
                by_type: [("prepare".to_string(), 2.0)].into(),
                from: 0,
                to: 1,
                total: 2.0,
            });
            st.types.insert("prepare".into());
            st.series.push_back(Point {
                height: 3,
                latency_mean_ms: Some(1.5),
                latency_p50_ms: None,
                latency_p99_ms: Some(f64::NAN),
                t: 0.5,
                tx_per_s: 10.0,
            });
        }
        let state = ui.state();
        let typed = serde_json::to_string(&state).unwrap();
        let sorted = serde_json::to_string(&serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(typed, sorted);
        assert!(typed.contains(r#"{"byzantine":"forge","partitioned":true,"running":true}"#));
        assert!(typed.contains(r#""latency_p99_ms":null"#));
    }
}
