//! Reads: `get` and `balance`, and for PBFT the client's read rule — 2f+1 matching signed
//! replies from the replicas' applied state, else the read ordered on every replica and f+1
//! matching replies.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use super::{err_text, get_json};
use crate::config::{ClusterConfig, Protocol};
use crate::reply::{ReadQuorum, ReadRule, ReadValue};

/// How long the read-only fast path (TOCS §5.1.3) waits for 2f+1 matching replies before the
/// client orders the read through the protocol instead.
const FAST_READ_WINDOW: Duration = Duration::from_secs(2);
/// How long the ordered fallback waits for f+1 matching replies (a replica answers within its
/// own 10 s marker timeout, or 503).
const ORDERED_READ_WINDOW: Duration = Duration::from_secs(12);

/// A read decided by a PBFT client: the value, its height and which rule decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedRead {
    pub read: ReadValue,
    pub height: u64,
    pub rule: ReadRule,
}

/// Asks every replica, through `fetch(node, ordered)`, and decides a read from their signed
/// replies. First the read-only optimisation (Castro–Liskov TOCS §5.1.3): every replica
/// answers from its applied state (`ordered == false`, `consistency=local`) and 2f+1 replies
/// matching in value and height decide. If they do not arrive within `fast_window` — replicas
/// at different heights, a lying or silent replica, a write in flight — the read is retried
/// "as a regular request" (§5.1.3): every replica orders a read marker before answering
/// (`ordered == true`, `consistency=linearizable`) and f+1 replies with the same value decide.
/// A reply counts only if its signature verifies against the key cluster.toml gives the
/// replica that was asked, and it is about what was asked (`wanted`).
pub async fn decide_read<F, Fut>(
    cluster: &ClusterConfig,
    wanted: &(dyn Fn(&ReadValue) -> bool + Sync),
    fetch: F,
    fast_window: Duration,
    ordered_window: Duration,
) -> Result<DecidedRead>
where
    F: Fn(u64, bool) -> Fut,
    Fut: std::future::Future<Output = Option<Value>> + Send + 'static,
{
    let mut why = String::new();
    for (rule, window) in [
        (ReadRule::Fast, fast_window),
        (ReadRule::Ordered, ordered_window),
    ] {
        let ordered = rule == ReadRule::Ordered;
        let mut quorum = ReadQuorum::new(rule, cluster.f);
        let mut tasks = tokio::task::JoinSet::new();
        for node in &cluster.nodes {
            let id = node.id;
            let fut = fetch(id, ordered);
            tasks.spawn(async move { (id, fut.await) });
        }
        let deadline = tokio::time::Instant::now() + window;
        let (mut answered, mut refused) = (0usize, 0usize);
        loop {
            let next = match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            let Ok((asked, Some(body))) = next else {
                continue;
            };
            answered += 1;
            let Some(reply) = crate::reply::parse_read_reply(&body) else {
                refused += 1;
                continue;
            };
            let Some(entry) = cluster.node(asked) else {
                continue;
            };
            if reply.node != asked
                || !wanted(&reply.read)
                || !crate::reply::verify_read(
                    &entry.public_key,
                    &reply.read,
                    reply.height,
                    &reply.signature,
                )
            {
                refused += 1;
                continue;
            }
            if let Some((read, height)) = quorum.add(asked, reply.read, reply.height) {
                tasks.abort_all();
                return Ok(DecidedRead { read, height, rule });
            }
        }
        tasks.abort_all();
        why = format!(
            "{} replicas answered, {refused} of them without a valid signed reply",
            answered
        );
    }
    bail!(
        "fewer than f+1 = {} replicas agreed on an ordered read in time ({why})",
        cluster.f + 1
    )
}

/// One replica's answer to a read, as JSON; None if unreachable or not a read reply (a 503
/// from a replica whose marker timed out, for example).
async fn fetch_read(http: reqwest::Client, url: String) -> Option<Value> {
    let resp = http.get(url).send().await.ok()?;
    let code = resp.status().as_u16();
    if code != 200 && code != 404 {
        return None;
    }
    resp.json::<Value>().await.ok()
}

/// A PBFT read of `path` (`/v1/kv/K` or `/v1/balances/A`, already percent-encoded).
pub async fn read_pbft(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    path: &str,
    wanted: &(dyn Fn(&ReadValue) -> bool + Sync),
) -> Result<DecidedRead> {
    let fetch = |node: u64, ordered: bool| {
        let url = cluster.node(node).map(|n| {
            format!(
                "http://{}{path}?consistency={}",
                n.api,
                if ordered { "linearizable" } else { "local" }
            )
        });
        let http = http.clone();
        async move { fetch_read(http, url?).await }
    };
    decide_read(
        cluster,
        wanted,
        fetch,
        FAST_READ_WINDOW,
        ORDERED_READ_WINDOW,
    )
    .await
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

pub(super) async fn get(cluster: &ClusterConfig, http: &reqwest::Client, key: &str) -> Result<()> {
    if cluster.protocol == Protocol::Pbft {
        let wanted = |r: &ReadValue| matches!(r, ReadValue::Kv { key: k, .. } if k == key);
        let path = format!("/v1/kv/{}", encode_segment(key));
        let d = read_pbft(cluster, http, &path, &wanted).await?;
        print_decided(key, &d);
        return Ok(());
    }
    let mut last = String::new();
    for node in &cluster.nodes {
        let url = format!("http://{}/v1/kv/{}", node.api, encode_segment(key));
        match get_json(http, url).await {
            Ok((200, v)) => {
                outln!(
                    "{} = {} (height {})",
                    key,
                    v.get("value").and_then(Value::as_str).unwrap_or(""),
                    v.get("height").unwrap_or(&Value::Null)
                );
                return Ok(());
            }
            Ok((404, _)) => {
                outln!("{key} not found");
                return Ok(());
            }
            Ok((_, v)) => last = format!("node {}: {}", node.id, err_text(&v)),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    bail!("no node could answer the read ({last})")
}

pub(super) async fn balance(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    account: &str,
) -> Result<()> {
    if cluster.protocol == Protocol::Pbft {
        let wanted =
            |r: &ReadValue| matches!(r, ReadValue::Balance { account: a, .. } if a == account);
        let path = format!("/v1/balances/{}", encode_segment(account));
        let d = read_pbft(cluster, http, &path, &wanted).await?;
        print_decided(account, &d);
        return Ok(());
    }
    let mut last = String::new();
    for node in &cluster.nodes {
        let url = format!(
            "http://{}/v1/balances/{}",
            node.api,
            encode_segment(account)
        );
        match get_json(http, url).await {
            Ok((200, v)) => {
                outln!(
                    "{account} = {} (height {})",
                    v.get("balance").unwrap_or(&Value::Null),
                    v.get("height").unwrap_or(&Value::Null)
                );
                return Ok(());
            }
            Ok((_, v)) => last = format!("node {}: {}", node.id, err_text(&v)),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    bail!("no node could answer the read ({last})")
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

    fn reply(signer: usize, claimed: u64, value: &str, height: u64) -> Value {
        let read = ReadValue::Kv {
            key: "x".into(),
            value: Some(value.into()),
        };
        let sig = crate::reply::sign_read(&sim_node_key(signer), &read, height);
        serde_json::json!({"key": "x", "value": value, "height": height, "node": claimed,
            "signature": hex::encode(sig)})
    }

    async fn decide(behaviour: [Behaviour; 4], lagging: bool) -> Result<DecidedRead> {
        let cluster = sim_cluster(Protocol::Pbft, 4, 1).unwrap();
        let wanted = |r: &ReadValue| matches!(r, ReadValue::Kv { key, .. } if key == "x");
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
            &wanted,
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
