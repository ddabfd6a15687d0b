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
use serde_json::{json, Value};
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct Process {
    pub running: bool,
    pub byzantine: Option<ByzantineMode>,
    pub partitioned: bool,
}

/// One node as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
struct NodeView {
    id: u64,
    api: String,
    /// Answered its last `/v1/status`.
    up: bool,
    role: Option<String>,
    term: Option<u64>,
    view: Option<u64>,
    leader: Option<u64>,
    height: u64,
    head_hash: String,
    peers_connected: u64,
    peers_unreachable: Vec<u64>,
    /// Its block at the compared height differs from the correct majority's.
    diverged: bool,
    tx_per_s: f64,
    /// From `local`: running, Byzantine mode, partitioned (null in `faultline ui`).
    process: Option<Process>,
}

#[derive(Clone, Debug, Serialize)]
struct PairRate {
    from: u64,
    to: u64,
    total: f64,
    by_type: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
struct Point {
    t: f64,
    tx_per_s: f64,
    latency_mean_ms: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    height: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Event {
    t: f64,
    kind: String,
    node: Option<u64>,
    text: String,
}

#[derive(Clone, Debug, Serialize)]
struct Verdict {
    safe: bool,
    text: String,
    /// The height at which two correct nodes were first seen holding different blocks.
    diverged_at: Option<u64>,
    /// The height the latest comparison was made at.
    compared_height: u64,
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
    pub fn state_json(&self) -> Value {
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
        json!({
            "protocol": self.protocol,
            "n": self.nodes.len(),
            "f": self.f,
            "controls": self.controls.is_some(),
            "modes": ByzantineMode::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "t": self.t(),
            "polls": st.polls,
            "leader": st.leader,
            "nodes": nodes,
            "messages": { "types": st.types, "pairs": st.pairs },
            "series": st.series,
            "timeline": st.timeline,
            "verdict": st.verdict,
        })
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
