//! The few series of a node's `/metrics` text the live view needs. Parsing is lenient: a line
//! that does not parse is skipped, since a node's answer is input like any other.

use std::collections::BTreeMap;

/// One node's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeMetrics {
    /// `faultline_peer_messages_sent_total` by (peer, type).
    pub peer_sent: BTreeMap<(u64, String), f64>,
    /// `faultline_committed_transactions_total`.
    pub committed: f64,
    /// `faultline_commit_latency_seconds`.
    pub latency: Histogram,
}

impl NodeMetrics {
    /// Whether a counter went down since `before`: the node restarted in between.
    pub fn restarted_since(&self, before: &NodeMetrics) -> bool {
        self.committed < before.committed
            || self.latency.count < before.latency.count
            || before
                .peer_sent
                .iter()
                .any(|(k, v)| self.peer_sent.get(k).copied().unwrap_or(0.0) < *v)
    }
}

/// A cumulative histogram: bucket upper bound (seconds) → observations at or below it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// Adds `now - before` (one node's observations between two polls).
    pub fn add_delta(&mut self, now: &Histogram, before: &Histogram) {
        for (i, &(le, c)) in now.buckets.iter().enumerate() {
            let b = before
                .buckets
                .iter()
                .find(|x| x.0 == le)
                .map_or(0.0, |x| x.1);
            match self.buckets.get_mut(i) {
                Some(slot) if slot.0 == le => slot.1 += (c - b).max(0.0),
                _ => self.buckets.push((le, (c - b).max(0.0))),
            }
        }
        self.sum += (now.sum - before.sum).max(0.0);
        self.count += (now.count - before.count).max(0.0);
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The upper bound of the bucket holding the q-quantile (buckets are powers of two, so
    /// this is within a factor of two; good enough for a chart).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let want = q * self.count;
        let mut sorted = self.buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        sorted
            .iter()
            .find(|(_, c)| *c >= want)
            .map(|(le, _)| *le)
            .filter(|le| le.is_finite())
            .or_else(|| {
                sorted
                    .iter()
                    .rev()
                    .map(|(le, _)| *le)
                    .find(|le| le.is_finite())
            })
    }
}

/// `name{a="x",b="y"} value` → (name, labels, value).
fn split_line(line: &str) -> Option<(&str, Vec<(&str, &str)>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Reads the series the view uses from a node's `/metrics` answer.
pub fn parse(text: &str) -> NodeMetrics {
    let mut m = NodeMetrics::default();
    for line in text.lines() {
        let Some((name, labels, value)) = split_line(line) else {
            continue;
        };
        match name {
            "faultline_peer_messages_sent_total" => {
                if let (Some(peer), Some(kind)) = (
                    label(&labels, "peer").and_then(|p| p.parse::<u64>().ok()),
                    label(&labels, "type"),
                ) {
                    m.peer_sent.insert((peer, kind.to_string()), value);
                }
            }
            "faultline_committed_transactions_total" => m.committed = value,
            "faultline_commit_latency_seconds_bucket" => {
                let le = match label(&labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(x) => match x.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                m.latency.buckets.push((le, value));
            }
            "faultline_commit_latency_seconds_sum" => m.latency.sum = value,
            "faultline_commit_latency_seconds_count" => m.latency.count = value,
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peer_counters_commits_and_the_latency_histogram() {
        let text = "# HELP x\n\
            faultline_peer_messages_sent_total{peer=\"1\",type=\"append_entries\"} 10\n\
            faultline_peer_messages_sent_total{peer=\"2\",type=\"append_entries\"} 4\n\
            faultline_committed_transactions_total 77\n\
            faultline_commit_latency_seconds_sum 0.3\n\
            faultline_commit_latency_seconds_count 3\n\
            faultline_commit_latency_seconds_bucket{le=\"0.001\"} 1\n\
            faultline_commit_latency_seconds_bucket{le=\"0.1\"} 2\n\
            faultline_commit_latency_seconds_bucket{le=\"+Inf\"} 3\n\
            garbage line\n# EOF\n";
        let m = parse(text);
        assert_eq!(m.peer_sent[&(1, "append_entries".into())], 10.0);
        assert_eq!(m.peer_sent.len(), 2);
        assert_eq!(m.committed, 77.0);
        assert_eq!(m.latency.count, 3.0);
        let mut h = Histogram::default();
        h.add_delta(&m.latency, &Histogram::default());
        assert_eq!(h.quantile(0.5), Some(0.1));
        assert!((h.mean().unwrap_or(0.0) - 0.1).abs() < 1e-9);
        let later = NodeMetrics {
            committed: 5.0,
            ..m.clone()
        };
        assert!(later.restarted_since(&m));
        assert!(!m.restarted_since(&m));
    }
}
