//! Requests kept in the order they arrived, found by digest.
//!
//! A replica hands the requests it waits for to the next primary after a view change (PBFT
//! §4.4: they are not lost with the view) and relays them to the other replicas when its request
//! timer expires (§4.1). The application may depend on their order — the ledger refuses a
//! client's transaction whose sequence number is not above the client's last applied one, so a
//! client that pipelines seq 1, 2, 3 loses 1 and 2 if they are ordered 3, 1, 2 — and a map keyed
//! by digest would re-order them by hash. This keeps first-arrival order, which is the order in
//! which the client (through the node it talked to) sent them.

use std::collections::BTreeMap;

type Hash = [u8; 32];

#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    /// Arrival number of each request held.
    index: BTreeMap<Hash, u64>,
    /// The requests by arrival number.
    order: BTreeMap<u64, (Hash, Vec<u8>)>,
    next: u64,
}

impl Arrivals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `request` behind the others; one already held keeps its place.
    pub fn insert(&mut self, digest: Hash, request: Vec<u8>) {
        if self.index.contains_key(&digest) {
            return;
        }
        self.index.insert(digest, self.next);
        self.order.insert(self.next, (digest, request));
        self.next += 1;
    }

    pub fn contains_key(&self, digest: &Hash) -> bool {
        self.index.contains_key(digest)
    }

    pub fn get(&self, digest: &Hash) -> Option<&Vec<u8>> {
        let n = self.index.get(digest)?;
        self.order.get(n).map(|(_, r)| r)
    }

    pub fn remove(&mut self, digest: &Hash) -> Option<Vec<u8>> {
        let n = self.index.remove(digest)?;
        self.order.remove(&n).map(|(_, r)| r)
    }

    /// Removes and returns the request that arrived first.
    pub fn pop_first(&mut self) -> Option<(Hash, Vec<u8>)> {
        let (_, (digest, request)) = self.order.pop_first()?;
        self.index.remove(&digest);
        Some((digest, request))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The digests held (in digest order).
    pub fn keys(&self) -> impl Iterator<Item = &Hash> {
        self.index.keys()
    }

    /// The requests in arrival order.
    pub fn values(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.order.values().map(|(_, r)| r)
    }
}

impl IntoIterator for Arrivals {
    type Item = (Hash, Vec<u8>);
    type IntoIter = std::collections::btree_map::IntoValues<u64, (Hash, Vec<u8>)>;

    /// Digest and request, in arrival order.
    fn into_iter(self) -> Self::IntoIter {
        self.order.into_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_arrival_order_not_digest_order() {
        let mut a = Arrivals::new();
        a.insert([9; 32], b"first".to_vec());
        a.insert([1; 32], b"second".to_vec());
        a.insert([5; 32], b"third".to_vec());
        a.insert([9; 32], b"again".to_vec());
        assert_eq!(a.len(), 3);
        assert_eq!(a.remove(&[1; 32]), Some(b"second".to_vec()));
        a.insert([1; 32], b"fourth".to_vec());
        let got: Vec<&[u8]> = a.values().map(Vec::as_slice).collect();
        assert_eq!(got, [&b"first"[..], b"third", b"fourth"]);
        assert_eq!(a.clone().pop_first(), Some(([9; 32], b"first".to_vec())));
        let digests: Vec<Hash> = a.into_iter().map(|(d, _)| d).collect();
        assert_eq!(digests, [[9; 32], [5; 32], [1; 32]]);
    }
}
