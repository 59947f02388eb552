//! `lmtrain serve`: a live dashboard of the runs and sweeps under a folder. `paths` is the only
//! place a URL becomes a file path; `tail` reads metrics files as they grow, each byte once;
//! `api` is the JSON the page reads (and nothing else does); `assets` the page itself, embedded
//! in the binary. Read-only: no request writes a file. It owns no format of its own: every
//! answer comes from the files the trainer and the sweep write, through the readers `runs` and
//! `plot` use.

mod api;
mod assets;
pub mod paths;
mod tail;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Requests answered at once; the others wait for a worker. (tiny_http reads each open
/// connection on a thread of its own, without a cap.)
const WORKERS: usize = 4;
/// The longest request line accepted (a run name is a folder path).
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
    let server = tiny_http::Server::http((opts.host.as_str(), opts.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or_else(|| format!("{}:{}", opts.host, opts.port), |a| a.to_string());
    crate::note!(
        "serving {} at http://{addr}/ (Ctrl-C stops)",
        root.dir.display()
    );
    let (server, api) = (Arc::new(server), Arc::new(api::Api::new(root)));
    // Reads every run's metrics once now, so the first page opened finds them summarised.
    let warm = api.clone();
    std::thread::spawn(move || warm.answer("/api/runs", &HashMap::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (server, api) = (server.clone(), api.clone());
            std::thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    answer(&api, request);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One request: limits first, then the page's files or the API.
fn answer(api: &api::Api, request: tiny_http::Request) {
    let (status, kind, body) = route(api, &request);
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).ok();
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    for h in [
        header("Content-Type", kind),
        header("Cache-Control", "no-store"),
        header("X-Content-Type-Options", "nosniff"),
    ]
    .into_iter()
    .flatten()
    {
        response.add_header(h);
    }
    let _ = request.respond(response); // a client that went away is not an error
}

fn route(api: &api::Api, request: &tiny_http::Request) -> (u16, &'static str, Vec<u8>) {
    const JSON: &str = "application/json";
    let refuse =
        |code: u16, why: &str| (code, JSON, format!("{{\"error\":\"{why}\"}}").into_bytes());
    if !matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    ) {
        return refuse(405, "read-only: GET only");
    }
    if request.url().len() > MAX_URL {
        return refuse(414, "request line too long");
    }
    if request.body_length().is_some_and(|n| n > 0) {
        return refuse(413, "no request body is accepted");
    }
    let (raw_path, raw_query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    let Some(path) = paths::percent_decode(raw_path) else {
        return refuse(404, "not found");
    };
    if let Some(asset) = assets::get(&path) {
        return (200, asset.kind, asset.body.as_bytes().to_vec());
    }
    if !path.starts_with("/api/") {
        return refuse(404, "not found");
    }
    let (code, value) = api.answer(&path, &query(raw_query));
    (code, JSON, value.to_string().into_bytes())
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
