//! The HTTP side of talking to a node: one request, its status code and body, and what the
//! body means as one of the typed replies of [`crate::api_types`]. Shared by `faultline
//! client`, the workload, nemesis, local clusters and the live view, so that each reads replies
//! the same way and none picks fields out of untyped JSON.

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::api_types::{BatchReply, CommittedReply, ErrorReply};
use crate::client_protocol::{Vouched, WriteAnswer};
use crate::config::{ClusterConfig, MAX_MAX_MESSAGE_BYTES};

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

/// The most of a reply body a client reads. The largest legitimate answer is a block of the
/// largest message budget a cluster may configure ([`MAX_MAX_MESSAGE_BYTES`]) rendered as
/// JSON, where a value byte can take up to six (`\u0001`) and hex doubles keys and
/// signatures; a node that sends more is faulty, and a client must not hold whatever it sends.
pub const MAX_REPLY_BYTES: usize = 6 * MAX_MAX_MESSAGE_BYTES + (1 << 20);

/// Sends `req` and reads the whole answer, at most [`MAX_REPLY_BYTES`] of it. A body that
/// breaks off or runs over the cap counts as empty: the status code still says what happened.
pub async fn send(req: reqwest::RequestBuilder) -> reqwest::Result<Answer> {
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    let body = read_capped(resp, MAX_REPLY_BYTES).await.unwrap_or_default();
    Ok(Answer { code, body })
}

/// The body of `resp` if it is at most `cap` bytes; None if it is longer (announced or sent)
/// or breaks off. Reads chunk by chunk, so an oversized body is never buffered whole.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Option<Bytes> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > cap {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(Bytes::from(body))
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

#[cfg(test)]
mod capped_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::read_capped;

    /// Serves one HTTP/1.1 answer made of `head` and then `chunks` chunked-encoded pieces of
    /// `chunk` bytes each, on a fresh loopback port.
    async fn serve_once(head: &'static str, chunks: usize, chunk: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(head.as_bytes()).await;
            for _ in 0..chunks {
                let piece = format!("{chunk:x}\r\n{}\r\n", "x".repeat(chunk));
                if s.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn a_reply_body_over_the_cap_is_refused_without_being_buffered_whole() {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let http = reqwest::Client::new();

        let url = serve_once(chunked, 4, 256).await;
        let resp = http.get(url).send().await.unwrap();
        let body = read_capped(resp, 1024)
            .await
            .expect("1024 bytes fit a 1024-byte cap");
        assert_eq!(body.len(), 1024);

        let url = serve_once(chunked, 40, 256).await;
        let resp = http.get(url).send().await.unwrap();
        assert!(
            read_capped(resp, 1024).await.is_none(),
            "10 KiB is over the cap"
        );

        // Announced too long: refused before any of it is read.
        let url = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n",
            0,
            0,
        )
        .await;
        let resp = http.get(url).send().await.unwrap();
        assert!(read_capped(resp, 1024).await.is_none());
    }
}
