//! `lmtrain serve` in a real browser: Debian's `chromium`, driven through `chromedriver` by
//! the W3C WebDriver protocol (JSON over HTTP, spoken here with std's TCP stream). The runs
//! table lists the test's runs, a run's chart has as many points as its metrics lines, a run
//! that trains while its page is open gains points, the compare view overlays two runs, and
//! the API refuses every traversal form. Screenshots go to `target/dashboard-screenshots/`.
//! Without chromium and chromedriver the browser test skips, unless `LMTRAIN_REQUIRE_BROWSER=1`
//! (set by `.ci/run`, which installs them).

mod common;

use common::{lmtrain_ok, temp_dir, tiny_config, write_config};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request; returns (status, body). `path` is sent as is (no normalisation).
/// The body is read by its Content-Length (or its chunks): chromedriver keeps connections open.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            r.read_exact(&mut raw).unwrap();
        }
        None if lower.contains("transfer-encoding: chunked") => loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        },
        None => {
            let _ = r.read_to_end(&mut raw);
        }
    }
    (status, String::from_utf8_lossy(&raw).into_owned())
}

/// Sends `request` as is and returns what comes back before the server closes.
fn raw(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request.as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || out.len() > 65536 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 200") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child killed when dropped (a failing assertion must not leave a server or a browser).
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lmtrain serve DIR --port 0`, and the port it printed.
fn serve(dir: &Path) -> (Killed, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmtrain"))
        .args(["serve", dir.to_str().unwrap(), "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok());
    (
        Killed(child),
        port.unwrap_or_else(|| panic!("no port in {line:?}")),
    )
}

/// A WebDriver session of headless chromium.
struct Browser {
    port: u16,
    session: String,
    _driver: Killed,
}

impl Browser {
    fn start() -> Option<Self> {
        let found = |b: &str| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found("chromium") || !found("chromedriver") {
            common::skip_or_fail(
                "LMTRAIN_REQUIRE_BROWSER",
                "no chromium and chromedriver (apt-get install chromium chromium-driver)",
            );
            return None;
        }
        let port = free_port();
        let driver = Killed(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("chromedriver", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/lib/chromium/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]}}}});
        let (status, body) = http(port, "POST", "/session", Some(&caps));
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(status, 200, "no WebDriver session: {body}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Some(Self {
            port,
            session,
            _driver: driver,
        })
    }

    fn post(&self, what: &str, body: Value) -> Value {
        let (status, text) = http(
            self.port,
            "POST",
            &format!("/session/{}/{what}", self.session),
            Some(&body),
        );
        assert_eq!(status, 200, "{what}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    fn go(&self, url: &str) {
        self.post("url", json!({"url": url}));
    }

    fn js(&self, script: &str) -> Value {
        self.post("execute/sync", json!({"script": script, "args": []}))
    }

    /// Waits until `script` returns a value `ok` accepts; returns it.
    fn until(&self, what: &str, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            if ok(&v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}: last {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, name: &str) {
        let (_, text) = http(
            self.port,
            "GET",
            &format!("/session/{}/screenshot", self.session),
            None,
        );
        let b64 = serde_json::from_str::<Value>(&text).unwrap()["value"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), base64(&b64)).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    clean
        .chunks(4)
        .flat_map(|q| {
            let n = q.iter().fold(0u32, |a, &c| (a << 6) | val(c) as u32) << (6 * (4 - q.len()));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes[..q.len().saturating_sub(1)].to_vec()
        })
        .collect()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The config of a tiny run `name` in folder `out`: `steps` steps, logged every step,
/// evaluated every 5; the file goes beside `out`, not in it.
fn config(out: &Path, name: &str, steps: u64) -> PathBuf {
    let text = tiny_config(out, steps)
        .replace("name = \"t\"", &format!("name = \"{name}\""))
        .replace("eval_every = 0", "eval_every = 5");
    let sub = out.parent().unwrap().join(format!("cfg-{name}"));
    std::fs::create_dir_all(&sub).unwrap();
    write_config(&sub, &text)
}

fn lines_of(run: &Path, kind: &str) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
        .count()
}

const POINTS: &str = "return Object.fromEntries([...document.querySelectorAll('path[data-series]')].map(p => [p.dataset.series, +p.dataset.points]))";

#[test]
fn the_dashboard_shows_runs_live_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = temp_dir("dashboard");
    let runs = dir.join("runs");
    for (name, steps) in [("r1", 20), ("r2", 30)] {
        let cfg = config(&runs, name, steps);
        lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    }
    let (_server, port) = serve(&runs);
    let base = format!("http://127.0.0.1:{port}/");
    browser.go(&base);
    let rows = "return [...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run)";
    browser.until("the runs table", rows, |v| v == &json!(["r1", "r2"]));
    let filter = "const f = document.getElementById('filter'); f.value = 'r2'; f.dispatchEvent(new Event('input')); return [...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run)";
    assert_eq!(browser.js(filter), json!(["r2"]), "the filter");
    browser.js("const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input'));");
    browser.screenshot("runs");
    // A run's chart: a point per metrics line.
    browser.go(&format!("{base}#/run/r2"));
    let want = json!({"train": lines_of(&runs.join("r2"), "train"), "val": lines_of(&runs.join("r2"), "eval"), "lr": lines_of(&runs.join("r2"), "train"), "grad norm": lines_of(&runs.join("r2"), "train"), "tokens/s": lines_of(&runs.join("r2"), "train")});
    browser.until("r2's charts", POINTS, |v| v == &want);
    browser.screenshot("run");
    // Compare: both runs' val curves in one chart.
    browser.go(&format!("{base}#/compare/r1,r2"));
    let pts = browser.until("the comparison", POINTS, |v| {
        v.get("r1 val").is_some() && v.get("r2 val").is_some()
    });
    assert_eq!(pts["r1 val"], lines_of(&runs.join("r1"), "eval"));
    browser.screenshot("compare");
    // A sweep's page: its trials' curves, one per trial, and a panel per swept key.
    let sweep_cfg = config(&runs, "base", 10);
    lmtrain_ok(&[
        "sweep",
        "-c",
        sweep_cfg.to_str().unwrap(),
        "--grid",
        "train.lr=1e-3,3e-3",
        "--name",
        "sw",
    ]);
    browser.go(&format!("{base}#/sweep/sw"));
    let trials = browser.until("the sweep's curves", POINTS, |v| {
        v.get("t00-lr1e-3").is_some() && v.get("t01-lr3e-3").is_some()
    });
    assert_eq!(
        trials["t00-lr1e-3"],
        lines_of(&runs.join("sw/t00-lr1e-3"), "eval")
    );
    let panels =
        browser.js("return [...document.querySelectorAll('svg.chart')].map(c => c.dataset.title)");
    assert!(
        panels
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().contains("against train.lr")),
        "{panels}"
    );
    browser.screenshot("sweep");
    // A run that trains while its page is open gains points, and appears in the table.
    let cfg = config(&runs, "live", 80);
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("checkpoint_every = 0", "checkpoint_every = 4");
    std::fs::write(&cfg, cfg_text).unwrap();
    let _live = Killed(
        Command::new(env!("CARGO_BIN_EXE_lmtrain"))
            .args(["train", "-c", cfg.to_str().unwrap()])
            // Slow checkpoints (the tests' fault hook): the run takes seconds, not a blink.
            .env("LMTRAIN_TEST_CHECKPOINT_PAUSE_MS", "40")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    browser.go(&base);
    browser.until("the live run in the table", rows, |v| {
        v.as_array().is_some_and(|a| a.contains(&json!("live")))
    });
    browser.go(&format!("{base}#/run/live"));
    let first = browser.until("the live run's first points", POINTS, |v| {
        v["train"].as_u64().is_some_and(|n| n > 0)
    })["train"]
        .as_u64()
        .unwrap();
    let status = || std::fs::read_to_string(runs.join("live/status.json")).unwrap_or_default();
    assert!(
        status().contains("running"),
        "the run ended before the page saw it grow: {}",
        status()
    );
    browser.until("new points of the live run", POINTS, |v| {
        v["train"].as_u64().is_some_and(|n| n > first)
    });
    wait_for("the live run to finish", || status().contains("finished"));
    let all = lines_of(&runs.join("live"), "train") as u64;
    browser.until("all the live run's points", POINTS, |v| {
        v["train"].as_u64() == Some(all)
    });
    browser.go(&base);
    browser.until("the finished status", "return [...document.querySelectorAll('#runs tbody tr')].find(r => r.dataset.run == 'live')?.children[1].textContent", |v| v == "finished");
}

#[test]
fn the_api_refuses_every_traversal_form_and_every_write() {
    let dir = temp_dir("dashboard-api");
    let runs = dir.join("runs");
    let cfg = config(&runs, "r1", 10);
    lmtrain_ok(&["train", "-c", cfg.to_str().unwrap()]);
    // A run folder outside the served one, reachable by a symlink inside it.
    let outside = config(&dir.join("elsewhere"), "secret", 5);
    lmtrain_ok(&["train", "-c", outside.to_str().unwrap()]);
    std::os::unix::fs::symlink(dir.join("elsewhere/secret"), runs.join("link")).unwrap();
    let (_server, port) = serve(&runs);
    let (ok, body) = http(port, "GET", "/api/runs/r1/config", None);
    assert_eq!(ok, 200, "{body}");
    let names: Vec<String> = serde_json::from_str::<Value>(&http(port, "GET", "/api/runs", None).1)
        .unwrap()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["r1"], "the symlinked run is listed");
    for path in [
        "/api/runs/../secret/config",
        "/api/runs/%2e%2e/secret/config",
        "/api/runs/%2E%2E%2Fsecret/config",
        "/api/runs/..%2fsecret/config",
        "/api/runs/r1%2f..%2f..%2fsecret/config",
        "/api/runs/%252e%252e%252fsecret/config",
        "/api/runs/..%5csecret/config",
        "/api/runs//etc/config",
        "/api/runs/%2fetc/config",
        "/api/runs/link/config",
        "/api/runs/.cache/config",
        "/api/runs/r1%00/config",
        "/api/runs/r1/../../secret/metrics",
        "/../secret/config.toml",
        "/api/sweeps/..",
        "/api/runs/r1/%2e%2e",
    ] {
        let (status, body) = http(port, "GET", path, None);
        assert_eq!(status, 404, "{path} answered {status}: {body}");
        assert!(!body.contains("[run]"), "{path} leaked a config");
    }
    // Writes: refused for their method, or for their body before it is read.
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(http(port, method, "/api/runs", None).0, 405, "{method}");
        assert_eq!(
            http(port, method, "/api/runs", Some(&json!({}))).0,
            413,
            "{method} with a body"
        );
    }
    assert_eq!(
        http(
            port,
            "GET",
            &format!("/api/runs/{}", "a".repeat(5000)),
            None
        )
        .0,
        414
    );
    // Folders being written: a half-written metrics line, a checkpoint mid-rename, a run
    // folder deleted after it was listed.
    let complete = lines_of(&runs.join("r1"), "train") + lines_of(&runs.join("r1"), "eval");
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(runs.join("r1/metrics.jsonl"))
        .unwrap();
    m.write_all(b"{\"kind\":\"train\",\"step\":99,\"lo")
        .unwrap();
    std::fs::create_dir_all(runs.join("r1/.tmp-step-00000011")).unwrap();
    let metrics: Value =
        serde_json::from_str(&http(port, "GET", "/api/runs/r1/metrics", None).1).unwrap();
    assert_eq!(metrics["records"].as_array().unwrap().len(), complete);
    let ckpts: Value =
        serde_json::from_str(&http(port, "GET", "/api/runs/r1/checkpoints", None).1).unwrap();
    let listed = ckpts["checkpoints"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.iter().all(|c| c["verified"] == true),
        "{ckpts}"
    );
    let gone = config(&runs, "gone", 5);
    lmtrain_ok(&["train", "-c", gone.to_str().unwrap()]);
    assert_eq!(http(port, "GET", "/api/runs/gone/metrics", None).0, 200);
    std::fs::remove_dir_all(runs.join("gone")).unwrap();
    assert_eq!(http(port, "GET", "/api/runs/gone/metrics", None).0, 404);
    // Bounded: a request head over 8 KiB, and connections past the 8 served and the 32
    // waiting, are refused at once; closed, they free the server again.
    let big = format!(
        "GET /api/runs HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert!(
        raw(port, &big).starts_with("HTTP/1.1 431"),
        "a 9 KB head was not refused"
    );
    // 45 connections at once: the server holds at most 40 of them (8 served, 32 waiting), and
    // answers the others 503 without reading them.
    let conns: Vec<TcpStream> = (0..45)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = conns
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 16];
            (&**c)
                .read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 503"))
        })
        .count();
    assert!(
        refused >= 5,
        "only {refused} of 45 connections were refused"
    );
    let idle = conns;
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    // The server still answers after all that.
    assert_eq!(http(port, "GET", "/api/runs", None).0, 200);
}
