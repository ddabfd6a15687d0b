//! Reads: `get` and `balance`, and for PBFT the client's read rule — 2f+1 matching signed
//! replies from the replicas' applied state, else the read ordered on every replica and f+1
//! matching replies.

use std::time::Duration;

use anyhow::{bail, Result};

use super::wire;
use crate::api_types::{BalanceReply, KvReply};
use crate::client_protocol::{ClientRead, DecidedRead, ReadRule, ReadTarget};
use crate::config::{ClusterConfig, Protocol};
use crate::reply::{ReadReply, ReadValue};

/// How long the read-only fast path (TOCS §5.1.3) waits for 2f+1 matching replies before the
/// client orders the read through the protocol instead.
const FAST_READ_WINDOW: Duration = Duration::from_secs(2);
/// How long the ordered fallback waits for f+1 matching replies (a replica answers within its
/// own 10 s marker timeout, or 503).
const ORDERED_READ_WINDOW: Duration = Duration::from_secs(12);

/// Asks every replica, through `fetch(node, ordered)`, and decides a read from their signed
/// replies by [`ClientRead`]: the fast path for `fast_window` (`ordered == false`,
/// `consistency=local`), then the read ordered on every replica for `ordered_window`
/// (`ordered == true`, `consistency=linearizable`). `fetch` yields None for a replica that did
/// not answer, `Some(None)` for one that answered with something that is not a read reply.
pub async fn decide_read<F, Fut>(
    cluster: &ClusterConfig,
    what: ReadTarget,
    fetch: F,
    fast_window: Duration,
    ordered_window: Duration,
) -> Result<DecidedRead>
where
    F: Fn(u64, bool) -> Fut,
    Fut: std::future::Future<Output = Option<Option<ReadReply>>> + Send + 'static,
{
    let mut read = ClientRead::new(cluster, what);
    loop {
        let (ordered, window) = match read.rule() {
            ReadRule::Fast => (false, fast_window),
            ReadRule::Ordered => (true, ordered_window),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for node in &cluster.nodes {
            let id = node.id;
            let fut = fetch(id, ordered);
            tasks.spawn(async move { (id, fut.await) });
        }
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let next = match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            let Ok((asked, Some(reply))) = next else {
                continue;
            };
            if let Some(d) = read.on_reply(cluster, asked, reply) {
                tasks.abort_all();
                return Ok(d);
            }
        }
        tasks.abort_all();
        if let Err(why) = read.phase_over() {
            bail!(why);
        }
    }
}

/// One replica's answer to a read: None if unreachable or not a read reply's status (a 503
/// from a replica whose marker timed out, for example); `Some(None)` for a 200/404 whose body
/// is not a read reply.
async fn fetch_read(
    http: reqwest::Client,
    url: String,
    balance: bool,
) -> Option<Option<ReadReply>> {
    let a = wire::send(http.get(url)).await.ok()?;
    if a.code != 200 && a.code != 404 {
        return None;
    }
    Some(if balance {
        a.json::<BalanceReply>().map(BalanceReply::signed)
    } else {
        a.json::<KvReply>().map(KvReply::signed)
    })
}

/// A PBFT read of `what` by the client's rule.
pub async fn read_pbft(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    what: ReadTarget,
) -> Result<DecidedRead> {
    let (path, balance) = match &what {
        ReadTarget::Kv(k) => (format!("/v1/kv/{}", encode_segment(k)), false),
        ReadTarget::Balance(a) => (format!("/v1/balances/{}", encode_segment(a)), true),
    };
    let fetch = |node: u64, ordered: bool| {
        let url = cluster.node(node).map(|n| {
            format!(
                "http://{}{path}?consistency={}",
                n.api,
                if ordered { "linearizable" } else { "local" }
            )
        });
        let http = http.clone();
        async move { fetch_read(http, url?, balance).await }
    };
    decide_read(cluster, what, fetch, FAST_READ_WINDOW, ORDERED_READ_WINDOW).await
}

fn print_decided(name: &str, d: &DecidedRead) {
    let how = match d.rule {
        ReadRule::Fast => "2f+1 matching replies",
        ReadRule::Ordered => "ordered, f+1 matching replies",
    };
    match &d.read {
        ReadValue::Kv { value: None, .. } => {
            outln!("{name} not found (height {}; {how})", d.height)
        }
        r => outln!(
            "{name} = {} (height {}; {how})",
            r.display_value(),
            d.height
        ),
    }
}

/// A raft read: any node answers (a follower forwards to the leader); the next on failure.
async fn read_raft(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    path: &str,
    absence_is_an_answer: bool,
) -> Result<Option<wire::Answer>> {
    let mut route = crate::client_protocol::Route::new(cluster, 0);
    let mut last = String::new();
    for _ in 0..cluster.nodes.len() {
        let asked = route.target();
        let Some(node) = cluster.node(asked) else {
            break;
        };
        match wire::send(http.get(format!("http://{}{path}", node.api))).await {
            Ok(a) if a.code == 200 => return Ok(Some(a)),
            Ok(a) if a.code == 404 && absence_is_an_answer => return Ok(None),
            Ok(a) => last = format!("node {}: {}", node.id, a.error_text()),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
        route.on_failure(asked, None);
    }
    bail!("no node could answer the read ({last})")
}

pub(super) async fn get(cluster: &ClusterConfig, http: &reqwest::Client, key: &str) -> Result<()> {
    if cluster.protocol == Protocol::Pbft {
        let d = read_pbft(cluster, http, ReadTarget::Kv(key.into())).await?;
        print_decided(key, &d);
        return Ok(());
    }
    let path = format!("/v1/kv/{}", encode_segment(key));
    match read_raft(cluster, http, &path, true).await? {
        Some(a) => match a.json::<KvReply>() {
            Some(r) => outln!(
                "{} = {} (height {})",
                key,
                r.value.unwrap_or_default(),
                r.height
            ),
            None => bail!("not a read reply: {}", a.error_text()),
        },
        None => outln!("{key} not found"),
    }
    Ok(())
}

pub(super) async fn balance(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    account: &str,
) -> Result<()> {
    if cluster.protocol == Protocol::Pbft {
        let d = read_pbft(cluster, http, ReadTarget::Balance(account.into())).await?;
        print_decided(account, &d);
        return Ok(());
    }
    let path = format!("/v1/balances/{}", encode_segment(account));
    match read_raft(cluster, http, &path, false)
        .await?
        .and_then(|a| a.json::<BalanceReply>())
    {
        Some(r) => outln!("{account} = {} (height {})", r.balance, r.height),
        None => bail!("no node answered {account}'s balance with a balance"),
    }
    Ok(())
}

/// Percent-encodes one URL path segment (a key or account name).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{sim_cluster, sim_node_key};

    /// What replica `node` answers; `height` differs per replica on the ordered path, as it
    /// does when each replica's marker lands at its own height.
    #[derive(Clone, Copy)]
    enum Behaviour {
        Correct,
        /// A validly signed reply with a value no correct replica holds.
        Lies,
        /// Never answers.
        Mute,
        /// Signs with its own key but claims to be replica 0.
        Impersonates0,
    }

    fn reply(signer: usize, claimed: u64, value: &str, height: u64) -> Option<ReadReply> {
        let r = KvReply::sign(
            &sim_node_key(signer),
            claimed,
            "x".into(),
            Some(value.into()),
            height,
        );
        // Through the wire format, as a client receives it.
        let body = serde_json::to_vec(&r).ok()?;
        serde_json::from_slice::<KvReply>(&body)
            .ok()
            .map(KvReply::signed)
    }

    async fn decide(behaviour: [Behaviour; 4], lagging: bool) -> Result<DecidedRead> {
        let cluster = sim_cluster(Protocol::Pbft, 4, 1).unwrap();
        let fetch = move |node: u64, ordered: bool| {
            let b = behaviour[node as usize];
            async move {
                // Fast path: every correct replica at height 5, or (lagging) replicas 2 and 3
                // still at 4 with the older value. Ordered, every correct replica holds "new".
                let (value, height) = match (ordered, node) {
                    (false, 0 | 1) => ("new", 5),
                    (false, _) if lagging => ("old", 4),
                    (false, _) => ("new", 5),
                    (true, n) => ("new", 6 + n),
                };
                match b {
                    Behaviour::Correct => Some(reply(node as usize, node, value, height)),
                    Behaviour::Lies => Some(reply(node as usize, node, "forged", 9)),
                    Behaviour::Mute => std::future::pending().await,
                    Behaviour::Impersonates0 => Some(reply(node as usize, 0, "forged", 9)),
                }
            }
        };
        decide_read(
            &cluster,
            ReadTarget::Kv("x".into()),
            fetch,
            Duration::from_millis(50),
            Duration::from_secs(5),
        )
        .await
    }

    fn new_at(d: &DecidedRead) -> Option<&str> {
        match &d.read {
            ReadValue::Kv { value, .. } => value.as_deref(),
            ReadValue::Balance { .. } => None,
        }
    }

    /// Issue 17: one replica lies (validly signed), one answers nothing; the fast path cannot
    /// gather 2f+1 matching replies, the ordered fallback returns the correct value.
    #[tokio::test]
    async fn a_lying_and_a_mute_replica_do_not_change_the_value_read() {
        use Behaviour::*;
        for lagging in [false, true] {
            let d = decide([Correct, Correct, Mute, Lies], lagging)
                .await
                .unwrap();
            assert_eq!(new_at(&d), Some("new"));
            assert_eq!(d.rule, ReadRule::Ordered);
            let d = decide([Correct, Mute, Lies, Correct], lagging)
                .await
                .unwrap();
            assert_eq!(new_at(&d), Some("new"));
            // A replica that signs for another is not counted for it.
            let d = decide([Correct, Correct, Impersonates0, Mute], lagging)
                .await
                .unwrap();
            assert_eq!(new_at(&d), Some("new"));
            assert_eq!(d.rule, ReadRule::Ordered);
        }
    }

    #[tokio::test]
    async fn the_fast_path_decides_when_2f_plus_1_replicas_match_in_value_and_height() {
        use Behaviour::*;
        // Three correct replicas at one height outvote a liar without ordering anything.
        let d = decide([Correct, Lies, Correct, Correct], false)
            .await
            .unwrap();
        assert_eq!(d.rule, ReadRule::Fast);
        assert_eq!((new_at(&d), d.height), (Some("new"), 5));
        // 0 and 1 at height 5, 2 at 4 with the older value, 3 lies: no 2f+1 match, so the
        // read is ordered and sees the newest value.
        let d = decide([Correct, Correct, Correct, Lies], true)
            .await
            .unwrap();
        assert_eq!(d.rule, ReadRule::Ordered);
        assert_eq!(new_at(&d), Some("new"));
    }
}
