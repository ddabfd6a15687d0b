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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{ClusterConfig, Protocol};
use crate::faults::ByzantineMode;
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

    async fn get(&self, addr: SocketAddr, path: &str) -> Option<reqwest::Response> {
        let resp = self
            .http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(resp)
    }

    /// Status and metrics of node `i` (None if it does not answer).
    async fn fetch(self: &Arc<Self>, i: usize) -> Option<(Value, NodeMetrics)> {
        let addr = self.nodes.get(i)?.1;
        let (status, metrics) = tokio::join!(self.get(addr, "/v1/status"), async {
            self.get(addr, "/metrics").await?.text().await.ok()
        });
        let status: Value = status?.json().await.ok()?;
        Some((
            status,
            metrics_text::parse(metrics.as_deref().unwrap_or("")),
        ))
    }

    /// The hash of node `i`'s block at height `h`.
    async fn block_hash(&self, i: usize, h: u64) -> Option<String> {
        let addr = self.nodes.get(i)?.1;
        let v: Value = self
            .get(addr, &format!("/v1/blocks/{h}?header=true"))
            .await?
            .json()
            .await
            .ok()?;
        v["hash"].as_str().map(str::to_string)
    }

    /// One round: every node's status and metrics, rates since the last round, the leader, the
    /// divergence check, and timeline entries for what changed.
    async fn poll_once(self: &Arc<Self>) {
        let n = self.nodes.len();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let ui = Arc::clone(self);
            set.spawn(async move { (i, ui.fetch(i).await) });
        }
        let mut got: Vec<Option<(Value, NodeMetrics)>> = vec![None; n];
        while let Some(r) = set.join_next().await {
            if let Ok((i, v)) = r {
                got[i] = v;
            }
        }
        let now = Instant::now();
        let heads: Vec<Option<(u64, String)>> = got
            .iter()
            .map(|g| {
                let s = &g.as_ref()?.0;
                Some((s["height"].as_u64()?, s["head_hash"].as_str()?.to_string()))
            })
            .collect();
        let divergence = self.compare_heads(&heads).await;

        let mut events = Vec::new();
        {
            let mut st = self.lock();
            st.polls += 1;
            let mut pairs: BTreeMap<(u64, u64), PairRate> = BTreeMap::new();
            let mut tx_rates = vec![0.0; n];
            let mut lat = metrics_text::Histogram::default();
            let mut names: HashMap<u64, usize> = HashMap::new();
            for (i, g) in got.into_iter().enumerate() {
                let id = self.nodes[i].0;
                let was_up = st.nodes[i].up;
                let Some((s, m)) = g else {
                    if was_up {
                        events.push(("down", Some(id), format!("node {id} stopped answering")));
                    }
                    let v = &mut st.nodes[i];
                    v.up = false;
                    v.tx_per_s = 0.0;
                    v.diverged = false;
                    st.prev[i] = None;
                    continue;
                };
                if !was_up && st.polls > 1 {
                    events.push(("up", Some(id), format!("node {id} answers")));
                }
                if let Some(l) = s["leader"].as_u64() {
                    *names.entry(l).or_default() += 1;
                }
                {
                    let v = &mut st.nodes[i];
                    v.up = true;
                    v.role = s["role"].as_str().map(str::to_string);
                    v.term = s["term"].as_u64();
                    v.view = s["view"].as_u64();
                    v.leader = s["leader"].as_u64();
                    v.height = s["height"].as_u64().unwrap_or(0);
                    v.head_hash = s["head_hash"].as_str().unwrap_or("").to_string();
                    v.peers_connected = s["peers_connected"].as_u64().unwrap_or(0);
                    v.peers_unreachable = s["peers_unreachable"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default();
                    v.diverged = divergence.diverged.contains(&i);
                }
                if let Some((then, before)) = &st.prev[i] {
                    let dt = now.duration_since(*then).as_secs_f64();
                    // A counter that went down means the node restarted: no rate this round.
                    if dt > 0.0 && !m.restarted_since(before) {
                        for ((peer, kind), &v) in &m.peer_sent {
                            let d =
                                v - before.peer_sent.get(&(*peer, kind.clone())).unwrap_or(&0.0);
                            if d <= 0.0 {
                                continue;
                            }
                            let p = pairs.entry((id, *peer)).or_insert_with(|| PairRate {
                                from: id,
                                to: *peer,
                                total: 0.0,
                                by_type: BTreeMap::new(),
                            });
                            p.total += d / dt;
                            *p.by_type.entry(kind.clone()).or_default() += d / dt;
                        }
                        tx_rates[i] = (m.committed - before.committed).max(0.0) / dt;
                        lat.add_delta(&m.latency, &before.latency);
                    }
                }
                for (_, kind) in m.peer_sent.keys() {
                    if !st.types.contains(kind) {
                        st.types.insert(kind.clone());
                    }
                }
                st.nodes[i].tx_per_s = tx_rates[i];
                st.prev[i] = Some((now, m));
            }
            // The leader: the node most answering nodes name, counted only if it answers too.
            let leader = names
                .into_iter()
                .max_by_key(|&(l, c)| (c, std::cmp::Reverse(l)))
                .map(|(l, _)| l)
                .filter(|&l| {
                    st.nodes.iter().any(|v| {
                        v.id == l
                            && v.up
                            && (self.protocol == Protocol::Pbft
                                || v.role.as_deref() == Some("leader"))
                    })
                });
            if leader != st.leader {
                if let Some(l) = leader {
                    let what = match self.protocol {
                        Protocol::Raft => "leader",
                        Protocol::Pbft => "primary",
                    };
                    let at = st
                        .nodes
                        .iter()
                        .find(|v| v.id == l)
                        .map(|v| match self.protocol {
                            Protocol::Raft => format!(" (term {})", v.term.unwrap_or(0)),
                            Protocol::Pbft => format!(" (view {})", v.view.unwrap_or(0)),
                        })
                        .unwrap_or_default();
                    events.push(("leader", Some(l), format!("node {l} is {what}{at}")));
                } else if let Some(old) = st.leader {
                    events.push(("leader", Some(old), "no agreed leader".to_string()));
                }
                st.leader = leader;
            }
            st.pairs = pairs.into_values().collect();
            // Every node applies every block: the cluster's rate is the leader's, or the
            // fastest node's while there is none.
            let tx = leader
                .and_then(|l| self.nodes.iter().position(|&(id, _)| id == l))
                .map(|i| tx_rates[i])
                .unwrap_or_else(|| tx_rates.iter().copied().fold(0.0, f64::max));
            let height = st.nodes.iter().map(|v| v.height).max().unwrap_or(0);
            let t = self.t();
            st.series.push_back(Point {
                t,
                tx_per_s: tx,
                latency_mean_ms: lat.mean().map(|s| s * 1e3),
                latency_p50_ms: lat.quantile(0.5).map(|s| s * 1e3),
                latency_p99_ms: lat.quantile(0.99).map(|s| s * 1e3),
                height,
            });
            while st.series.len() > SERIES_LEN {
                st.series.pop_front();
            }
            if divergence.compared > 0 {
                st.verdict.compared_height = divergence.compared;
            }
            if let Some(h) = divergence.correct_fork {
                if st.verdict.safe {
                    st.verdict = Verdict {
                        safe: false,
                        text: format!(
                            "UNSAFE: correct nodes hold different blocks at height {h} ({})",
                            divergence.detail
                        ),
                        diverged_at: Some(h),
                        compared_height: h,
                    };
                    events.push(("unsafe", None, st.verdict.text.clone()));
                }
            } else if st.verdict.safe && divergence.compared > 0 {
                st.verdict.text = format!(
                    "safe: every correct node that answers holds the same block at height {}",
                    divergence.compared
                );
            }
        }
        for (kind, node, text) in events {
            self.event(kind, node, text);
        }
    }

    /// Compares the nodes' chains at the lowest height every answering node holds: a node at
    /// that height shows its head, the others are asked for their block there. Blocks are
    /// hash-chained, so agreement at one height is agreement below it.
    async fn compare_heads(&self, heads: &[Option<(u64, String)>]) -> Divergence {
        let mut out = Divergence::default();
        let Some(h) = heads
            .iter()
            .flatten()
            .map(|(h, _)| *h)
            .filter(|&h| h > 0)
            .min()
        else {
            return out;
        };
        let mut hashes: Vec<Option<String>> = vec![None; heads.len()];
        for (i, head) in heads.iter().enumerate() {
            match head {
                Some((hh, hash)) if *hh == h => hashes[i] = Some(hash.clone()),
                Some((hh, _)) if *hh > h => hashes[i] = self.block_hash(i, h).await,
                _ => {}
            }
        }
        // The reference is the hash most correct nodes hold; Byzantine nodes are compared
        // against it but never outvote it.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (i, x) in hashes.iter().enumerate() {
            if let Some(x) = x {
                if !self.is_byzantine(i) {
                    *counts.entry(x.as_str()).or_default() += 1;
                }
            }
        }
        let Some(reference) = counts
            .iter()
            .max_by_key(|(k, c)| (**c, std::cmp::Reverse(**k)))
            .map(|(k, _)| k.to_string())
        else {
            return out;
        };
        out.compared = h;
        for (i, x) in hashes.iter().enumerate() {
            if x.as_ref().is_some_and(|x| *x != reference) {
                out.diverged.insert(i);
            }
        }
        if counts.len() > 1 {
            out.correct_fork = Some(h);
            let groups: Vec<String> = counts
                .keys()
                .map(|k| {
                    let ids: Vec<String> = hashes
                        .iter()
                        .enumerate()
                        .filter(|(i, x)| x.as_deref() == Some(*k) && !self.is_byzantine(*i))
                        .map(|(i, _)| self.nodes[i].0.to_string())
                        .collect();
                    format!("nodes {} have {}…", ids.join(","), &k[..k.len().min(8)])
                })
                .collect();
            out.detail = groups.join("; ");
        }
        out
    }

    /// Polls the nodes every [`POLL`] until `stop` turns true.
    pub async fn poll(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let next = tokio::time::Instant::now() + POLL;
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.poll_once() => {}
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// The page and its JSON routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/api/state", get(api_state))
            .route("/api/nodes/{i}/{action}", post(api_control))
            .with_state(Arc::clone(self))
    }

    /// Serves the view on `listener` and polls the nodes until `stop` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let poller = tokio::spawn(Arc::clone(&self).poll(stop.clone()));
        let mut stop2 = stop.clone();
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop2.changed().await;
            })
            .await;
        poller.abort();
        r
    }
}

#[derive(Default)]
struct Divergence {
    compared: u64,
    /// Nodes (indices) whose block at `compared` differs from the correct majority's.
    diverged: BTreeSet<usize>,
    /// Set when two correct nodes differ.
    correct_fork: Option<u64>,
    detail: String,
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn api_state(State(ui): State<Arc<Ui>>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(ui.state_json()),
    )
        .into_response()
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

/// `POST /api/nodes/{i}/{kill|restart|partition|heal|byzantine}`; `byzantine` takes
/// `{"mode":"equivocate"}` (or `"honest"`). Answered only for loopback clients that send
/// [`CONTROL_HEADER`], and only where the view owns the processes.
async fn api_control(
    State(ui): State<Arc<Ui>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((i, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(controls) = &ui.controls else {
        return error(
            StatusCode::FORBIDDEN,
            "this view watches a cluster it does not own; controls exist in `faultline local --ui`",
        );
    };
    if !peer.ip().is_loopback() || !headers.contains_key(CONTROL_HEADER) {
        return error(
            StatusCode::FORBIDDEN,
            format!("controls answer loopback clients sending the {CONTROL_HEADER} header only"),
        );
    }
    let Some(node) = i.parse::<usize>().ok().filter(|&i| i < ui.nodes.len()) else {
        return error(StatusCode::NOT_FOUND, format!("no node {i}"));
    };
    let action = match action.as_str() {
        "kill" => Action::Kill,
        "restart" => Action::Restart,
        "partition" => Action::Partition,
        "heal" => Action::Heal,
        "byzantine" => {
            let mode = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["mode"].as_str().map(str::to_string))
                .unwrap_or_default();
            if mode == "honest" {
                Action::Byzantine(None)
            } else {
                match serde_json::from_value::<ByzantineMode>(Value::String(mode.clone())) {
                    Ok(m) => Action::Byzantine(Some(m)),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("mode {mode:?} is not honest or one of the six modes"),
                        )
                    }
                }
            }
        }
        other => return error(StatusCode::NOT_FOUND, format!("no action {other:?}")),
    };
    let name = action.name();
    let (tx, rx) = oneshot::channel();
    let req = ControlRequest {
        node,
        action,
        reply: tx,
    };
    if controls.send(req).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is shutting down",
        );
    }
    let id = ui.nodes[node].0;
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(text))) => {
            ui.event("action", Some(id), text.clone());
            Json(json!({ "ok": true, "text": text })).into_response()
        }
        Ok(Ok(Err(e))) => {
            ui.event("action", Some(id), format!("{name} node {id} failed: {e}"));
            error(StatusCode::CONFLICT, e)
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer from the cluster",
        ),
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
