//! The HTTP/1.1 server under the dashboard: requests parsed by `httparse`, a fixed number of
//! connection threads fed by a bounded queue (a connection beyond them and the queue is
//! answered 503 at once), request heads of at most 8 KiB and 32 headers, no request bodies,
//! and an idle connection closed after 10 s. Keep-alive, so a page's requests share one
//! connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const IDLE: Duration = Duration::from_secs(10);

/// What the handler sees of a request.
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query, still percent-encoded.
    pub target: String,
}

pub struct Response {
    pub status: u16,
    pub kind: &'static str,
    pub body: Vec<u8>,
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Accepts connections for ever; `workers` threads serve them, `queue` more may wait.
pub fn serve(listener: TcpListener, workers: usize, queue: usize, handler: Handler) {
    let (tx, rx) = sync_channel::<TcpStream>(queue);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..workers {
        let (rx, handler) = (rx.clone(), handler.clone());
        std::thread::spawn(move || worker(&rx, &handler));
    }
    for stream in listener.incoming().flatten() {
        if let Err(TrySendError::Full(mut s)) = tx.try_send(stream) {
            let _ = write_response(
                &mut s,
                &plain(503, "busy: too many connections"),
                false,
                false,
            );
        }
    }
}

fn worker(rx: &Mutex<Receiver<TcpStream>>, handler: &Handler) {
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(stream) = next else { return };
        let _ = connection(stream, handler); // a client that went away is not an error
    }
}

/// The requests of one connection, until it closes, idles or sends something refused.
fn connection(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_len = loop {
            let end = find_head_end(&buf);
            if end.unwrap_or(buf.len()) > MAX_HEAD {
                return write_response(
                    &mut stream,
                    &plain(431, "request head too large"),
                    false,
                    false,
                );
            }
            if let Some(end) = end {
                break end;
            }
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf[..head_len]);
        let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
            (parsed, req.method, req.path)
        else {
            return write_response(&mut stream, &plain(400, "bad request"), false, false);
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let has_body = header("transfer-encoding").is_some()
            || header("content-length").is_some_and(|v| v != "0");
        let keep = req.version == Some(1) && header("connection").as_deref() != Some("close");
        let request = Request {
            method: method.to_string(),
            target: target.to_string(),
        };
        if has_body {
            // Refused unread: the connection cannot be reused past a body it did not read.
            return write_response(
                &mut stream,
                &plain(413, "no request body is accepted"),
                false,
                false,
            );
        }
        let response = handler(&request);
        write_response(&mut stream, &response, request.method == "HEAD", keep)?;
        if !keep {
            return Ok(());
        }
        buf.drain(..head_len);
    }
}

/// The length of the head (through its blank line), once it is all in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

pub fn plain(status: u16, why: &str) -> Response {
    let body = serde_json::json!({ "error": why }).to_string().into_bytes();
    Response {
        status,
        kind: "application/json",
        body,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    head_only: bool,
    keep: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: {}\r\n\r\n",
        r.status,
        reason(r.status),
        r.kind,
        r.body.len(),
        if keep { "keep-alive" } else { "close" }
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}
