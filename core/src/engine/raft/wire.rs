//! The Raft engine's wire format: one tag byte ([`TAG_RAFT`], [`TAG_SYNC`]) and a postcard
//! body, and the message names the metrics use, read from the encoded bytes without decoding
//! the message a second time.

use std::sync::Arc;

use faultline_raft::{Message, MessageKind};

/// Wire tag of a Raft message.
pub const TAG_RAFT: u8 = 0;
/// Wire tag of a block-sync message.
pub const TAG_SYNC: u8 = 1;

pub(super) fn tagged<T: serde::Serialize>(tag: u8, value: &T) -> Arc<[u8]> {
    let mut out = vec![tag];
    out.extend(crate::store::encode(value));
    out.into()
}

/// A Raft message as sent on the wire.
pub fn encode_raft(m: &Message) -> Arc<[u8]> {
    tagged(TAG_RAFT, m)
}

/// The Raft message in `bytes`, if it is one and decodes.
pub fn decode_raft(bytes: &[u8]) -> Option<Message> {
    match bytes.split_first() {
        Some((&TAG_RAFT, body)) => postcard::from_bytes(body).ok(),
        _ => None,
    }
}

/// The leading fields of a postcard-encoded [`Message`]: enough to name it without decoding
/// (and copying) its entries a second time.
#[derive(serde::Deserialize)]
struct MessageHeader {
    _from: u64,
    _to: u64,
    _term: u64,
    /// postcard encodes the `MessageBody` variant index as a varint u32.
    body_variant: u32,
}

/// The snake_case type name of a wire message (Raft or block sync), or "unknown" if it does
/// not parse.
pub fn message_kind(bytes: &[u8]) -> &'static str {
    match bytes.split_first() {
        Some((&TAG_RAFT, body)) => raft_message_kind(body),
        // postcard encodes the `SyncMessage` variant index as a varint u32 first.
        Some((&TAG_SYNC, [0, ..])) => "block_request",
        Some((&TAG_SYNC, [1, ..])) => "block_response",
        _ => "unknown",
    }
}

/// The snake_case type name of a postcard-encoded Raft message (without the wire tag).
fn raft_message_kind(bytes: &[u8]) -> &'static str {
    postcard::take_from_bytes::<MessageHeader>(bytes)
        .ok()
        .and_then(|(h, _)| MessageKind::from_variant_index(h.body_variant))
        .map_or("unknown", MessageKind::as_str)
}

#[cfg(test)]
mod kind_tests {
    use faultline_raft::{Entry, Membership, Message, MessageBody, Snapshot};

    use crate::engine::block_sync::SyncMessage;

    #[test]
    fn message_kind_names_every_message_like_type_name() {
        let bodies = vec![
            MessageBody::AppendEntries {
                prev_log_index: 3,
                prev_log_term: 1,
                entries: vec![Entry::new(1, 4, vec![1, 2, 3])],
                leader_commit: 2,
                read_ctx: Some(9),
            },
            MessageBody::AppendEntriesResponse {
                success: true,
                match_index: 4,
                reject_hint: None,
                read_ctx: None,
            },
            MessageBody::RequestVote {
                last_log_index: 1,
                last_log_term: 1,
                pre_vote: true,
                transfer: false,
            },
            MessageBody::RequestVoteResponse {
                granted: true,
                pre_vote: false,
            },
            MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    index: 1,
                    term: 1,
                    conf: Membership::new(vec![1, 2, 3], vec![4]).unwrap_or_default(),
                    data: vec![0; 10],
                },
            },
            MessageBody::InstallSnapshotResponse { match_index: 7 },
            MessageBody::TimeoutNow,
        ];
        for body in bodies {
            let m = Message {
                from: 300,
                to: 1,
                term: u64::MAX,
                body,
            };
            let bytes = super::encode_raft(&m);
            assert_eq!(super::message_kind(&bytes), m.kind().as_str());
        }
        assert_eq!(super::message_kind(&[0xff]), "unknown");
        assert_eq!(super::message_kind(&[0, 0xff]), "unknown");
        let req = SyncMessage::Request { lo: 1, hi: 2 };
        let resp = SyncMessage::Response {
            lo: 1,
            hi: 2,
            blocks: Vec::new(),
        };
        assert_eq!(
            super::message_kind(&super::tagged(super::TAG_SYNC, &req)),
            "block_request"
        );
        assert_eq!(
            super::message_kind(&super::tagged(super::TAG_SYNC, &resp)),
            "block_response"
        );
    }
}
