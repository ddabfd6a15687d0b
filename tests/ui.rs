//! The live web view end to end: `faultline local --ui` on a free loopback port, the page
//! loaded in headless Chromium driven over W3C WebDriver (Debian's `chromedriver`, spoken to
//! with the harness's plain HTTP client), every node shown with a height above 0, "kill -9"
//! clicked on the leader, a new leader and a growing height seen on the page, and a screenshot
//! saved as `target/ui-screenshot.png`; then the killed node is restarted, partitioned from
//! the others (both sides see each other unreachable while the rest commit) and healed.
//!
//! Skipped, with the reason printed, only when no chromedriver/Chromium is installed or the
//! browser cannot start (`.ci/run` installs both). Every process started here is killed when
//! the test ends, also on failure: `local` by the guard below (its nodes die with it), the
//! browser by ending the WebDriver session and then chromedriver.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{bin, http, wait_for};

/// One request to chromedriver. Unlike the harness's `http`, it reads the answer by its
/// Content-Length: chromedriver keeps the connection open despite `Connection: close`.
fn wd(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Option<(u16, Value)> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (split, len) = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..split])
                .ok()?
                .to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            break (split, len);
        }
    };
    while buf.len() < split + 4 + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let end = (split + 4 + len).min(buf.len());
    Some((
        code,
        serde_json::from_slice(&buf[split + 4..end]).unwrap_or(Value::Null),
    ))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `faultline local --ui`: SIGINT on drop (it then stops its nodes and audits), SIGKILL if it
/// has not exited in 20 s (the nodes die with it: PR_SET_PDEATHSIG).
struct Local {
    child: Option<Child>,
}

impl Local {
    /// Stops the run and returns its stdout and whether it exited with 0.
    fn stop(&mut self) -> (bool, String) {
        let Some(mut c) = self.child.take() else {
            return (false, String::new());
        };
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let start = Instant::now();
        let mut ok = false;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                ok = status.success();
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        if let Some(mut s) = c.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        (ok, out)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    addr: String,
    session: Option<String>,
    /// The browser profile directory, removed when the browser is gone.
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = wd(&self.addr, "DELETE", &format!("/session/{s}"), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FAULTLINE_CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Browser {
    /// Starts chromedriver and a headless browser; Err(reason) if either cannot start.
    fn start() -> Result<Browser, String> {
        let driver_bin =
            chromedriver().ok_or("no chromedriver (apt-get install chromium-driver)")?;
        let browser_bin = chromium().ok_or("no chromium (apt-get install chromium)")?;
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", driver_bin.display()))?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut b = Browser {
            driver,
            addr: format!("127.0.0.1:{port}"),
            session: None,
            profile,
        };
        let start = Instant::now();
        while wd(&b.addr, "GET", "/status", None).is_none_or(|(_, v)| v["value"]["ready"] != true) {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("chromedriver did not become ready in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser_bin,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1500,1100",
                         format!("--user-data-dir={}", b.profile.path().display())],
            }
        }}});
        let body = serde_json::to_vec(&caps).map_err(|e| e.to_string())?;
        let (code, v) = wd(&b.addr, "POST", "/session", Some(&body))
            .ok_or("chromedriver did not answer POST /session")?;
        let id = v["value"]["sessionId"].as_str().map(str::to_string);
        match (code, id) {
            (200, Some(id)) => {
                b.session = Some(id);
                Ok(b)
            }
            _ => Err(format!(
                "the browser did not start: {}",
                v["value"]["message"]
            )),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let s = self.session.as_ref()?;
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
        let (code, v) = wd(
            &self.addr,
            method,
            &format!("/session/{s}{path}"),
            bytes.as_deref(),
        )?;
        (code == 200).then(|| v["value"].clone())
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .expect("navigate");
    }

    /// The element matching a CSS selector (its WebDriver id), if any.
    fn find(&self, css: &str) -> Option<String> {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v.as_object()?.values().next()?.as_str().map(str::to_string)
    }

    /// The visible text of the element matching `css` (None if absent or just replaced).
    fn text(&self, css: &str) -> Option<String> {
        let e = self.find(css)?;
        self.call("GET", &format!("/element/{e}/text"), None)?
            .as_str()
            .map(str::to_string)
    }

    fn click(&self, css: &str) -> bool {
        self.find(css)
            .and_then(|e| self.call("POST", &format!("/element/{e}/click"), Some(json!({}))))
            .is_some()
    }

    fn screenshot(&self) -> Option<Vec<u8>> {
        let b64 = self.call("GET", "/screenshot", None)?;
        base64_decode(b64.as_str()?)
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn state(addr: &str) -> Option<Value> {
    match http(addr, "GET", "/api/state", None) {
        Some((200, v)) => Some(v),
        _ => None,
    }
}

#[test]
fn the_page_shows_the_cluster_and_a_leader_kill_elects_another() {
    let browser = match Browser::start() {
        Ok(b) => b,
        Err(reason) => {
            eprintln!("SKIPPED ui test: {reason}");
            return;
        }
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let mut local = Local {
        child: Some(
            Command::new(bin())
                .args(["local", "--protocol", "raft", "--nodes", "3", "--ui", &addr])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn faultline local --ui"),
        ),
    };
    // The view answers once the cluster is up.
    wait_for(Duration::from_secs(90), "the view to answer", || {
        state(&addr).filter(|s| s["polls"].as_u64() > Some(1))
    });

    browser.goto(&format!("http://{addr}/"));
    let heights = |b: &Browser| -> Option<Vec<u64>> {
        (0..3)
            .map(|i| b.text(&format!("#node-{i}-height"))?.trim().parse().ok())
            .collect()
    };
    let before = wait_for(
        Duration::from_secs(60),
        "every node to show a height > 0 on the page",
        || heights(&browser).filter(|h| h.iter().all(|&x| x > 0)),
    );
    let leader: u64 = wait_for(Duration::from_secs(30), "a leader on the page", || {
        browser.text("#leader")?.trim().parse().ok()
    });
    let top = before.iter().copied().max().unwrap_or(0);
    eprintln!("page: heights {before:?}, leader {leader}");

    wait_for(
        Duration::from_secs(10),
        "a click on the leader's kill",
        || browser.click(&format!("#kill-{leader}")).then_some(()),
    );
    let (new_leader, after) = wait_for(
        Duration::from_secs(60),
        "a new leader and a higher height on the page",
        || {
            let l: u64 = browser.text("#leader")?.trim().parse().ok()?;
            if l == leader {
                return None;
            }
            let h: u64 = browser
                .text(&format!("#node-{l}-height"))?
                .trim()
                .parse()
                .ok()?;
            (h > top).then_some((l, h))
        },
    );
    let killed = browser
        .text(&format!("#node-{leader}-state"))
        .unwrap_or_default();
    assert!(killed.contains("killed"), "node {leader} state: {killed:?}");
    eprintln!("page: node {leader} killed, new leader {new_leader} at height {after} (was {top})");

    // The JSON the page shows says the same, and the kill is on the timeline.
    let s = state(&addr).expect("state");
    assert_eq!(s["leader"].as_u64(), Some(new_leader), "{s}");
    assert_eq!(s["verdict"]["safe"], true, "{}", s["verdict"]);
    let timeline = s["timeline"].to_string();
    assert!(
        timeline.contains(&format!("kill -9 node {leader}")),
        "{timeline}"
    );
    let pairs = s["messages"]["pairs"].as_array().map_or(0, Vec::len);
    assert!(pairs > 0, "no per-pair message rates: {s}");

    // Let the charts and the timeline show the election before the picture.
    std::thread::sleep(Duration::from_secs(2));
    let png = browser.screenshot().expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let path = target.join("ui-screenshot.png");
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());

    // Restart the killed node, then partition it from the page: both sides report each other
    // unreachable while the others keep committing; heal, and it catches up.
    wait_for(Duration::from_secs(10), "a click on restart", || {
        browser.click(&format!("#restart-{leader}")).then_some(())
    });
    let node = |s: &Value, i: u64| s["nodes"][i as usize].clone();
    wait_for(
        Duration::from_secs(30),
        "the restarted node to answer",
        || {
            let s = state(&addr)?;
            (node(&s, leader)["up"] == true && node(&s, leader)["peers_connected"] == 2)
                .then_some(())
        },
    );
    wait_for(Duration::from_secs(10), "a click on partition", || {
        browser.click(&format!("#partition-{leader}")).then_some(())
    });
    let cut_at = wait_for(Duration::from_secs(30), "a two-sided partition", || {
        let s = state(&addr)?;
        let me = node(&s, leader);
        let others_cut = (0..3u64).filter(|&i| i != leader).all(|i| {
            node(&s, i)["peers_unreachable"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(leader)))
        });
        (me["peers_unreachable"].as_array().map(Vec::len) == Some(2) && others_cut)
            .then(|| node(&s, new_leader)["height"].as_u64())
            .flatten()
    });
    wait_for(
        Duration::from_secs(30),
        "commits without the partitioned node",
        || {
            let s = state(&addr)?;
            (node(&s, new_leader)["height"].as_u64()? > cut_at + 5).then_some(())
        },
    );
    wait_for(Duration::from_secs(10), "a click on heal", || {
        browser.click(&format!("#heal-{leader}")).then_some(())
    });
    wait_for(
        Duration::from_secs(30),
        "the healed node to catch up",
        || {
            let s = state(&addr)?;
            let me = node(&s, leader);
            (me["peers_connected"] == 2
                && me["height"].as_u64()? > cut_at + 5
                && me["diverged"] == false)
                .then_some(())
        },
    );
    let s = state(&addr).expect("state");
    let timeline = s["timeline"].to_string();
    for want in [
        format!("partition node {leader}"),
        format!("heal node {leader}"),
    ] {
        assert!(timeline.contains(&want), "{want} not in {timeline}");
    }
    assert_eq!(s["verdict"]["safe"], true, "{}", s["verdict"]);
    eprintln!("page: node {leader} restarted, partitioned at height {cut_at}, healed, caught up");

    let (ok, out) = local.stop();
    assert!(
        ok && out.contains("safe:"),
        "local --ui exit: {ok}, stdout:\n{out}"
    );
}
