//! Restart: a replica rebuilt from the records it persisted (keys in `persist`) remembers its
//! view, the pre-prepares it accepted and its own votes in that view, its prepared
//! certificates, batch bodies and stable checkpoint, and its VIEW-CHANGE and NEW-VIEW, so it
//! never signs a message that conflicts with one it signed before the crash.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::config::Config;
use crate::log::Slot;
use crate::message::{decode_payload, Payload, PreparedProof, SignedMessage};
use crate::persist::{self, ViewState};
use crate::view_change::{PreparedCert, VcEntry};
use crate::{App, RestoreError};

use super::{Hash, Replica};

impl<A: App> Replica<A> {
    /// Rebuilds a replica from every record it persisted (as `PersistOp`s applied in order).
    /// The restored replica remembers its view, its accepted pre-prepares and own votes in that
    /// view, its prepared certificates and stable checkpoint, so it never signs a message that
    /// conflicts with one it signed before the crash.
    pub fn restore(
        config: Config,
        key: SigningKey,
        app: A,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, RestoreError> {
        let mut r = Replica::new(config, key, app)?;
        let corrupt = |k: &[u8]| RestoreError::Corrupt(String::from_utf8_lossy(k).into_owned());
        let mut by_seq: BTreeMap<u64, BTreeMap<&'static [u8], Vec<u8>>> = BTreeMap::new();
        let mut own_vc = None;
        let mut saved_nv = None;
        for (k, v) in &records {
            if k.as_slice() == persist::VIEW {
                let vs: ViewState = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
                r.view = vs.view;
                r.in_view_change = vs.in_view_change;
                r.vc_consecutive = vs.vc_consecutive;
            } else if k.as_slice() == persist::EXEC {
                r.last_executed = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
            } else if k.as_slice() == persist::STABLE {
                r.stable = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
            } else if k.as_slice() == persist::VC {
                own_vc = Some(v.clone());
            } else if k.as_slice() == persist::NV {
                saved_nv = Some(v.clone());
            } else if let Some((prefix, seq)) = persist::parse_seq_key(k) {
                by_seq.entry(seq).or_default().insert(prefix, v.clone());
            }
        }
        let decode_msg = |k: &[u8], v: &[u8]| -> Result<(SignedMessage, Payload), RestoreError> {
            let m: SignedMessage = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
            let p = decode_payload(&m.payload).map_err(|_| corrupt(k))?;
            Ok((m, p))
        };
        let h = r.stable.seq;
        for (seq, recs) in by_seq {
            r.persisted_seqs.insert(seq);
            if seq <= h {
                continue;
            }
            if let Some(v) = recs.get(persist::BD) {
                let (digest, requests): (Hash, Vec<Vec<u8>>) =
                    postcard::from_bytes(v).map_err(|_| corrupt(persist::BD))?;
                r.bodies.insert(digest, (seq, requests));
            }
            if let Some(v) = recs.get(persist::PC) {
                let proof: PreparedProof =
                    postcard::from_bytes(v).map_err(|_| corrupt(persist::PC))?;
                let p =
                    decode_payload(&proof.pre_prepare.payload).map_err(|_| corrupt(persist::PC))?;
                if let Payload::PrePrepare(pp) = p {
                    r.prepared.insert(
                        seq,
                        PreparedCert {
                            view: pp.view,
                            digest: pp.digest,
                            proof,
                        },
                    );
                }
            }
            if r.in_view_change {
                continue;
            }
            let Some(v) = recs.get(persist::PP) else {
                continue;
            };
            let (m, p) = decode_msg(persist::PP, v)?;
            let Payload::PrePrepare(pp) = p else {
                return Err(corrupt(persist::PP));
            };
            if pp.view != r.view {
                continue;
            }
            let mut slot = Slot::new(r.view);
            let digest = pp.digest;
            slot.pre_prepare = Some((m, pp));
            if let Some(v) = recs.get(persist::PR) {
                let (m, p) = decode_msg(persist::PR, v)?;
                if let Payload::Prepare(x) = p {
                    if x.view == r.view && x.digest == digest {
                        slot.prepares.insert(r.me, (digest, m));
                    }
                }
            }
            if let Some(v) = recs.get(persist::CM) {
                let (m, p) = decode_msg(persist::CM, v)?;
                if let Payload::Commit(x) = p {
                    if x.view == r.view && x.digest == digest {
                        slot.commits.insert(r.me, (digest, m.signature));
                        slot.prepared = true;
                    }
                }
            }
            r.log.insert(seq, slot);
        }
        if let Some(v) = own_vc {
            let (m, p) = decode_msg(persist::VC, &v)?;
            if let Payload::ViewChange(vc) = p {
                if vc.new_view == r.view {
                    let mut certs = BTreeMap::new();
                    for proof in &vc.prepared {
                        if let Ok(Payload::PrePrepare(pp)) =
                            decode_payload(&proof.pre_prepare.payload)
                        {
                            certs.insert(
                                pp.seq,
                                PreparedCert {
                                    view: pp.view,
                                    digest: pp.digest,
                                    proof: proof.clone(),
                                },
                            );
                        }
                    }
                    r.view_changes.insert(r.me, VcEntry { msg: m, vc, certs });
                }
            }
        }
        // A replica that installed its view keeps serving the NEW-VIEW to replicas that missed
        // it (`help_lagging_view_change`); without it they could wait for it forever.
        if let Some(v) = saved_nv {
            let (m, p) = decode_msg(persist::NV, &v)?;
            if let Payload::NewView(nv) = p {
                if nv.view == r.view && !r.in_view_change {
                    if r.is_primary() {
                        r.new_view_sent = Some(nv.view);
                    }
                    r.last_new_view = Some(m);
                }
            }
        }
        let top = r.log.keys().next_back().copied().unwrap_or(0);
        r.next_seq = top.max(h).max(r.last_executed) + 1;
        let headers: Vec<(u64, Hash)> = r
            .log
            .iter()
            .filter_map(|(s, slot)| slot.digest().map(|d| (*s, d)))
            .collect();
        for (seq, d) in headers {
            r.need_body(seq, d);
        }
        // A replica that crashed in the middle of a state transfer resumes it: the batches it
        // stored are executed (`last_executed`), the rest is fetched from the checkpoint's
        // signers (TOCS §5.3.2).
        if r.last_executed < r.stable.seq {
            r.start_fetch(r.stable.seq, r.checkpoint_signers(), 0);
        }
        Ok(r)
    }
}
