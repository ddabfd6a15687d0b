//! `etcdload ENDPOINTS CLIENTS SECS BATCH VALUE_BYTES`: CLIENTS concurrent clients, spread over
//! the comma-separated ENDPOINTS, each sending one request at a time for SECS seconds — one
//! Txn of BATCH puts of VALUE_BYTES-byte values to fresh keys (a single put when BATCH is 1),
//! the shape of `faultline bench`'s clients posting BATCH signed puts to `POST /v1/txs`.
//! Prints one line: `puts_per_s=… p50_ms=… p99_ms=…` (latency per request).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Txn, TxnOp};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, clients, secs, batch, value_bytes] = args.as_slice() else {
        bail!("usage: etcdload ENDPOINTS CLIENTS SECS BATCH VALUE_BYTES");
    };
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let clients: usize = clients.parse().context("CLIENTS")?;
    let secs: u64 = secs.parse().context("SECS")?;
    let batch: usize = batch.parse().context("BATCH")?;
    let value = vec![b'v'; value_bytes.parse().context("VALUE_BYTES")?];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let endpoint = endpoints[c % endpoints.len()].to_string();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = Client::connect([endpoint.as_str()], None)
                .await
                .with_context(|| format!("connect to {endpoint}"))?
                .kv_client();
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                if batch <= 1 {
                    kv.put(format!("c{c}-{i}"), value.clone(), None).await?;
                } else {
                    let ops: Vec<TxnOp> = (0..batch)
                        .map(|j| TxnOp::put(format!("c{c}-{i}-{j}"), value.clone(), None))
                        .collect();
                    kv.txn(Txn::new().and_then(ops)).await?;
                }
                latencies.push(start.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if all.is_empty() {
        bail!("no request completed");
    }
    all.sort();
    let q = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "puts_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        (all.len() * batch) as f64 / elapsed,
        q(0.5),
        q(0.99)
    );
    Ok(())
}
