//! The HTTP side of talking to a node: one request, its status code and body, and what the
//! body means as one of the typed replies of [`crate::api_types`]. Shared by `faultline
//! client`, the workload, nemesis, local clusters and the live view, so that each reads replies
//! the same way and none picks fields out of untyped JSON.

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::api_types::{BatchReply, CommittedReply, ErrorReply};
use crate::client_protocol::{Vouched, WriteAnswer};
use crate::config::ClusterConfig;

/// A node's answer: status code and body as received.
#[derive(Clone, Debug)]
pub struct Answer {
    pub code: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The body as reply type `T`; None if it is not one.
    pub fn json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as `T` if the status is `code`.
    pub fn json_if<T: DeserializeOwned>(&self, code: u16) -> Option<T> {
        (self.code == code).then(|| self.json()).flatten()
    }

    /// What went wrong, for a message: the node's `{"error":…}` sentence, else the body as it
    /// came (a proxy's page, an empty body), so nothing the node said is lost.
    pub fn error_text(&self) -> String {
        match self.json::<ErrorReply>() {
            Some(e) => e.error,
            None if self.body.is_empty() => format!("status {} with an empty body", self.code),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// Sends `req` and reads the whole answer. A body that breaks off counts as empty: the status
/// code still says what happened.
pub async fn send(req: reqwest::RequestBuilder) -> reqwest::Result<Answer> {
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    Ok(Answer { code, body })
}

/// `GET url` as JSON of type `T`, None unless the node answers 2xx with a `T`.
pub async fn get<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> Option<T> {
    let a = send(req).await.ok()?;
    if !a.ok() {
        return None;
    }
    a.json()
}

/// Whose word a committed reply is.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// Its signature must verify against cluster.toml's key of the node it names.
    Signed(&'a ClusterConfig),
    /// The node asked: the caller matches replies by the connection it sent on and checks no
    /// signature (the workload, whose machine is the one under test).
    Endpoint,
}

/// What node `asked`'s answer to `POST /v1/tx` or `/v1/txs` means to the client protocol:
/// committed (a batch reply or a single one), refused (4xx: no node will take the request), or
/// nothing usable (5xx, or a reply that does not parse or verify).
pub fn write_answer(asked: u64, answer: &Answer, trust: Trust<'_>) -> WriteAnswer {
    if (400..500).contains(&answer.code) {
        return WriteAnswer::Refused(format!(
            "node {asked} refused the transaction: {}",
            answer.error_text()
        ));
    }
    if answer.code != 200 {
        return WriteAnswer::Unavailable(format!("node {asked}: {}", answer.error_text()));
    }
    let vouched = if let Some(batch) = answer.json::<BatchReply>() {
        let signer = batch.node;
        match trust {
            Trust::Signed(cluster) => Vouched::batch(cluster, batch).map(|v| (signer, v)),
            Trust::Endpoint => Some((
                signer,
                batch
                    .results
                    .into_iter()
                    .map(|e| Vouched::observed(asked, e))
                    .collect(),
            )),
        }
    } else if let Some(one) = answer.json::<CommittedReply>() {
        let signer = one.node;
        let v = match trust {
            Trust::Signed(cluster) => Vouched::committed(cluster, &one),
            Trust::Endpoint => Some(Vouched::observed(
                asked,
                crate::api_types::BatchEntry {
                    height: one.height,
                    result: crate::api_types::EntryResult::Applied(one.result),
                    tx_hash: one.tx_hash,
                },
            )),
        };
        v.map(|v| (signer, vec![v]))
    } else {
        None
    };
    match vouched {
        Some((signer, entries)) => WriteAnswer::Committed { signer, entries },
        None => WriteAnswer::Unavailable(format!(
            "node {asked}: unverifiable reply {}",
            String::from_utf8_lossy(&answer.body)
        )),
    }
}

/// An unreachable node or a request that timed out.
pub fn unreachable(asked: u64, e: impl std::fmt::Display) -> WriteAnswer {
    WriteAnswer::Unavailable(format!("node {asked} unreachable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_protocol::{ClientWrite, WriteNext};
    use crate::config::Protocol;
    use crate::ledger::{TxOutcome, TxRecord};
    use crate::sim::{sim_cluster, sim_node_key};

    fn answer(code: u16, body: impl serde::Serialize) -> Answer {
        Answer {
            code,
            body: serde_json::to_vec(&body).unwrap().into(),
        }
    }

    #[test]
    fn answers_become_what_the_protocol_counts() {
        let cluster = sim_cluster(Protocol::Pbft, 4, 1).unwrap();
        let rec = TxRecord {
            height: 2,
            tx_hash: [5; 32],
            outcome: TxOutcome::Ok,
        };
        let good = answer(200, CommittedReply::sign(&sim_node_key(1), 1, &rec));
        let forged = answer(200, CommittedReply::sign(&sim_node_key(2), 1, &rec));
        let mut w = ClientWrite::new(&cluster, 0, [[5; 32]]);
        let signed = Trust::Signed(&cluster);
        assert_eq!(
            w.on_answer(1, write_answer(1, &good, signed)),
            WriteNext::Wait
        );
        assert!(matches!(
            write_answer(2, &forged, signed),
            WriteAnswer::Unavailable(m) if m.contains("unverifiable")
        ));
        // By endpoint, the forged reply is the word of the node it came from.
        assert_eq!(
            w.on_answer(2, write_answer(2, &forged, Trust::Endpoint)),
            WriteNext::Done
        );
        let refused = answer(403, ErrorReply::new("not a permitted client"));
        assert!(matches!(
            write_answer(0, &refused, signed),
            WriteAnswer::Refused(m) if m == "node 0 refused the transaction: not a permitted client"
        ));
        let busy = Answer {
            code: 503,
            body: Bytes::from_static(b"overloaded"),
        };
        assert!(matches!(
            write_answer(3, &busy, signed),
            WriteAnswer::Unavailable(m) if m == "node 3: overloaded"
        ));
    }
}
