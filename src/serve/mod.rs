//! `lmtrain serve`: a live dashboard of the runs and sweeps under a folder. `paths` is the only
//! place a URL becomes a file path; `tail` reads metrics files as they grow, each byte once;
//! `api` is the JSON the page reads (and nothing else does); `assets` the page itself, embedded
//! in the binary. Read-only: no request writes a file. It owns no format of its own: every
//! answer comes from the files the trainer and the sweep write, through the readers `runs` and
//! `plot` use.

mod api;
mod assets;
mod http;
pub mod paths;
mod tail;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Connections served at once, and connections that may wait for one (beyond: 503).
const WORKERS: usize = 8;
const QUEUE: usize = 32;
/// The longest request target accepted (a run name is a folder path).
const MAX_URL: usize = 2048;

pub struct ServeOptions {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
}

/// Serves until the process is stopped.
pub fn run(opts: &ServeOptions) -> Result<()> {
    if !opts.dir.is_dir() {
        bail!(
            "{} is not a folder: give the folder that holds your runs (default: checkpoints)",
            opts.dir.display()
        );
    }
    let root =
        paths::Root::new(&opts.dir).with_context(|| format!("resolving {}", opts.dir.display()))?;
    if !["127.0.0.1", "localhost", "::1"].contains(&opts.host.as_str()) {
        crate::note!("warning: --host {}: the dashboard (read-only, no authentication) is reachable from other machines", opts.host);
    }
    let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    let addr = listener.local_addr()?;
    crate::note!(
        "serving {} at http://{addr}/ (Ctrl-C stops)",
        root.dir.display()
    );
    let api = Arc::new(api::Api::new(root));
    // Reads every run's metrics once now, so the first page opened finds them summarised.
    let warm = api.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        warm.answer("/api/runs", &HashMap::new());
        crate::note!(
            "read every run's metrics in {:.0} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    });
    http::serve(listener, WORKERS, QUEUE, Arc::new(move |r| route(&api, r)));
    Ok(())
}

/// One request: the page's files or the API.
fn route(api: &api::Api, request: &http::Request) -> http::Response {
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        return http::plain(405, "read-only: GET only");
    }
    if request.target.len() > MAX_URL {
        return http::plain(414, "request target too long");
    }
    let (raw_path, raw_query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let Some(path) = paths::percent_decode(raw_path) else {
        return http::plain(404, "not found");
    };
    if let Some(asset) = assets::get(&path) {
        return http::Response {
            status: 200,
            kind: asset.kind,
            body: asset.body.as_bytes().to_vec(),
        };
    }
    if !path.starts_with("/api/") {
        return http::plain(404, "not found");
    }
    let (status, text) = api.answer(&path, &query(raw_query));
    http::Response {
        status,
        kind: "application/json",
        body: text.into_bytes(),
    }
}

/// `a=1&b=2`, each part percent-decoded (`+` is not a space here: no form posts to us).
fn query(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((paths::percent_decode(k)?, paths::percent_decode(v)?))
        })
        .collect()
}
