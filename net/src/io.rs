//! Framing and the per-peer writer / per-stream reader tasks.
//!
//! Wire format on the `/faultline/msg/1` stream: a sequence of frames, each a 4-byte big-endian
//! payload length followed by that many bytes of opaque engine message (docs/PROTOCOL.md §2;
//! what an engine message is: §4.1 Raft, §5.1 PBFT).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use libp2p::swarm::{ConnectionId, Stream};
use tokio::sync::mpsc;

use crate::{Credit, Ctrl, Inbound, NodeId, PeerSlot, Shared};

/// Frames are gathered into one buffer until it reaches this size, then written and flushed.
const BATCH_BYTES: usize = 256 * 1024;
/// Payloads at least this large are written directly instead of being copied into the batch.
const DIRECT_WRITE_BYTES: usize = 64 * 1024;
const READ_BUFFER_BYTES: usize = 128 * 1024;
/// A frame's buffer grows by at most this much ahead of the bytes that arrived.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// What the driver tells a peer's writer about its outbound streams.
pub(crate) enum StreamUpdate {
    /// Our stream on this connection is ready: write to it from now on.
    Ready(ConnectionId, Stream),
    /// This connection is closed: stop writing to its stream. Without this the writer would take
    /// the next queued message and lose it on the dead stream, even when a new connection's
    /// stream is about to arrive.
    Closed(ConnectionId),
}

pub(crate) struct Outgoing {
    pub kind: &'static str,
    pub bytes: Arc<[u8]>,
}

/// Per-kind tally of one write batch, merged into the shared counters with one lock per batch.
#[derive(Default)]
pub(crate) struct BatchTally(pub(crate) Vec<(&'static str, u64, u64)>);

impl BatchTally {
    fn add(&mut self, kind: &'static str, bytes: usize) {
        match self.0.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(e) => {
                e.1 += 1;
                e.2 += bytes as u64;
            }
            None => self.0.push((kind, 1, bytes as u64)),
        }
    }
    fn msgs(&self) -> u64 {
        self.0.iter().map(|e| e.1).sum()
    }
}

/// Owns the send queue of one peer for the lifetime of the node. Writes to whichever outbound
/// stream the driver most recently handed it; while there is none, messages wait in the bounded
/// queue (and `send` reports `QueueFull` once it is full).
pub(crate) async fn writer_task(
    node: NodeId,
    slot: Arc<PeerSlot>,
    mut queue: mpsc::Receiver<Outgoing>,
    mut streams: mpsc::UnboundedReceiver<StreamUpdate>,
    shared: Arc<Shared>,
    ctrl: mpsc::UnboundedSender<Ctrl>,
) {
    let mut current: Option<(ConnectionId, Stream)> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + DIRECT_WRITE_BYTES);
    loop {
        tokio::select! {
            biased;
            s = streams.recv() => match s {
                // A newer stream replaces the old one (the old connection is gone or going).
                Some(StreamUpdate::Ready(conn, stream)) => current = Some((conn, stream)),
                Some(StreamUpdate::Closed(conn)) => {
                    if current.as_ref().is_some_and(|(c, _)| *c == conn) {
                        current = None;
                    }
                }
                None => return,
            },
            m = queue.recv(), if current.is_some() => {
                let Some(first) = m else { return };
                let (conn, stream) = current.as_mut().expect("guarded by the select condition");
                let mut tally = BatchTally::default();
                let res =
                    write_batch(stream, &mut buf, first, &mut queue, &slot.queued_bytes, &mut tally)
                        .await;
                match res {
                    Ok(()) => shared.count_sent(&tally),
                    Err(e) => {
                        let lost = tally.msgs();
                        shared.dropped_send_failed.fetch_add(lost, Ordering::Relaxed);
                        tracing::debug!(peer = node, "stream write failed ({e}); {lost} msgs lost");
                        let _ = ctrl.send(Ctrl::StreamFailed { node, connection: *conn });
                        current = None;
                    }
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    first: Outgoing,
    queue: &mut mpsc::Receiver<Outgoing>,
    queued_bytes: &AtomicUsize,
    tally: &mut BatchTally,
) -> io::Result<()> {
    buf.clear();
    let mut next = Some(first);
    while let Some(m) = next.take() {
        let len = m.bytes.len();
        queued_bytes.fetch_sub(len, Ordering::Relaxed);
        tally.add(m.kind, len);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        if len >= DIRECT_WRITE_BYTES {
            stream.write_all(buf).await?;
            buf.clear();
            stream.write_all(&m.bytes).await?;
        } else {
            buf.extend_from_slice(&m.bytes);
            if buf.len() >= BATCH_BYTES {
                stream.write_all(buf).await?;
                buf.clear();
            }
        }
        next = queue.try_recv().ok();
    }
    if !buf.is_empty() {
        stream.write_all(buf).await?;
        buf.clear();
    }
    stream.flush().await
}

/// Reads frames from one inbound stream until it ends and delivers them as [`Inbound`].
pub(crate) async fn reader_task<R: AsyncRead + Unpin>(
    node: NodeId,
    stream: R,
    inbound: mpsc::Sender<Inbound>,
    shared: Arc<Shared>,
) {
    let max = shared.max_frame_bytes;
    let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        let mut hdr = [0u8; 4];
        let mut filled = 0;
        while filled < 4 {
            match r.read(&mut hdr[filled..]).await {
                Ok(0) => {
                    if filled > 0 {
                        shared.reject("malformed");
                    }
                    return;
                }
                Ok(n) => filled += n,
                Err(e) => {
                    tracing::debug!(peer = node, "inbound stream ended: {e}");
                    return;
                }
            }
        }
        let len = u32::from_be_bytes(hdr) as usize;
        if len > max {
            shared.reject("oversized");
            tracing::warn!(peer = node, len, max, "dropping oversized frame");
            // Skip the payload with bounded memory so the stream stays in sync.
            let mut limited = (&mut r).take(len as u64);
            match futures::io::copy(&mut limited, &mut futures::io::sink()).await {
                Ok(n) if n == len as u64 => continue,
                _ => return,
            }
        }
        // Reserve the frame's bytes from this peer's inbound budget before reading it: a peer
        // that sends faster than the node consumes waits here (and yamux's flow control then
        // stalls only its stream), instead of filling the node's memory or the shared queue.
        let credit = match shared.inbound_budget(node) {
            Some(budget) => match budget.acquire_many_owned(len as u32).await {
                Ok(p) => Some(p),
                Err(_) => return, // the network is shutting down
            },
            None => None,
        };
        // Grow the buffer as bytes arrive, a chunk at a time, rather than allocating the
        // announced length up front: a length prefix alone must not make the node allocate
        // megabytes. Chunks are zeroed by the allocator, not byte by byte.
        let mut bytes: Vec<u8> = Vec::new();
        while bytes.len() < len {
            let start = bytes.len();
            let want = (len - start).min(READ_CHUNK_BYTES);
            bytes.extend_from_slice(&vec![0u8; want]);
            if let Err(e) = r.read_exact(&mut bytes[start..]).await {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    shared.reject("malformed");
                }
                tracing::debug!(peer = node, "inbound stream ended mid-frame: {e}");
                return;
            }
        }
        shared.received_msgs.fetch_add(1, Ordering::Relaxed);
        shared
            .received_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        let msg = Inbound {
            from: node,
            bytes,
            credit: Credit {
                _held: credit.map(Arc::new),
            },
        };
        if inbound.send(msg).await.is_err() {
            return; // the node dropped its receiver
        }
    }
}

/// Runs the frame reader over `wire` as if a peer had sent it, and returns the frames it
/// delivered. The fuzzing entry point of the wire format: it must return for any input, each
/// frame delivered whole or counted as rejected.
pub fn read_frames(wire: &[u8], max_frame_bytes: usize) -> Vec<Vec<u8>> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return Vec::new();
    };
    let shared = Arc::new(Shared::detached(max_frame_bytes));
    let (tx, mut rx) = mpsc::channel(1 << 16);
    rt.block_on(reader_task(
        1,
        futures::io::Cursor::new(wire.to_vec()),
        tx,
        shared,
    ));
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m.bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max: usize) -> Arc<Shared> {
        Arc::new(Shared::detached(max))
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    async fn read_all(wire: Vec<u8>, max: usize) -> (Vec<Inbound>, Arc<Shared>) {
        let sh = shared(max);
        let (tx, mut rx) = mpsc::channel(64);
        reader_task(7, futures::io::Cursor::new(wire), tx, sh.clone()).await;
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        (out, sh)
    }

    #[tokio::test]
    async fn frames_are_delivered_in_order_and_counted() {
        let mut wire = frame(b"one");
        wire.extend(frame(b""));
        wire.extend(frame(&[9u8; 1000]));
        let (got, sh) = read_all(wire, 1000).await;
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|m| m.from == 7));
        assert_eq!(got[0].bytes, b"one");
        assert!(got[1].bytes.is_empty());
        assert_eq!(got[2].bytes, vec![9u8; 1000]);
        assert_eq!(sh.received_msgs.load(Ordering::Relaxed), 3);
        assert_eq!(sh.received_bytes.load(Ordering::Relaxed), 1003);
        assert!(sh.rejected.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn oversized_frame_is_skipped_and_the_stream_stays_in_sync() {
        let mut wire = frame(&[1u8; 101]);
        wire.extend(frame(b"after"));
        let (got, sh) = read_all(wire, 100).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].bytes, b"after");
        assert_eq!(sh.rejected.lock().unwrap().get("oversized"), Some(&1));
    }

    #[tokio::test]
    async fn a_peer_cannot_queue_more_than_its_inbound_budget() {
        let sh = shared(100);
        let (queue, _queue_rx) = mpsc::channel(1);
        sh.peers.write().unwrap().insert(
            7,
            Arc::new(PeerSlot {
                queue,
                queued_bytes: Default::default(),
                inbound_budget: Arc::new(tokio::sync::Semaphore::new(100)),
                connected: Default::default(),
                blocked: Default::default(),
            }),
        );
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend(frame(&[5u8; 60]));
        }
        let (tx, mut rx) = mpsc::channel(64);
        let reader = tokio::spawn(reader_task(
            7,
            futures::io::Cursor::new(wire),
            tx,
            sh.clone(),
        ));
        let first = rx.recv().await.unwrap();
        // 60 of 100 bytes are held: the second 60-byte frame must wait for the first to go.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "a second frame got past the budget");
        drop(first);
        let second = rx.recv().await.unwrap();
        drop(second);
        let third = rx.recv().await.unwrap();
        assert_eq!(third.bytes.len(), 60);
        drop(third);
        reader.await.unwrap();
        assert_eq!(sh.inbound_budget(7).unwrap().available_permits(), 100);
    }

    #[tokio::test]
    async fn a_frame_announcing_more_than_it_sends_is_malformed() {
        let mut wire = 64u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[1u8; 10]);
        let (got, sh) = read_all(wire, 100).await;
        assert!(got.is_empty());
        assert_eq!(sh.rejected.lock().unwrap().get("malformed"), Some(&1));
    }

    #[tokio::test]
    async fn truncated_frames_are_malformed() {
        // Cut inside the payload.
        let mut wire = frame(b"ok");
        wire.extend(&frame(b"truncated")[..7]);
        let (got, sh) = read_all(wire, 100).await;
        assert_eq!(got.len(), 1);
        assert_eq!(sh.rejected.lock().unwrap().get("malformed"), Some(&1));
        // Cut inside the header.
        let (got, sh) = read_all(vec![0, 0], 100).await;
        assert!(got.is_empty());
        assert_eq!(sh.rejected.lock().unwrap().get("malformed"), Some(&1));
        // A clean end between frames is not an error.
        let (got, sh) = read_all(frame(b"x"), 100).await;
        assert_eq!(got.len(), 1);
        assert!(sh.rejected.lock().unwrap().is_empty());
    }
}
