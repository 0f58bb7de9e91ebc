//! The tests' one HTTP/1.1 client, and the hub API spoken through it.
//!
//! One request per connection (`connection: close` unless the caller sets a `connection`
//! header, as a WebSocket upgrade does), response read until complete (content-length or
//! chunked) or closed, chunked bodies decoded. A server may answer (401, 413) and close before
//! reading a large body: a failed write is reported only if no response can be read.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::checker::is_epoch;
use super::STEP;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (as sent) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The headers of a WebSocket upgrade request (RFC 6455 §1.3's example key).
pub const UPGRADE: &[(&str, &str)] = &[
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Upgrades a raw TCP connection to `addr` to a WebSocket at `/ws` (no token: a dev-mode Link)
/// with [`UPGRADE`]'s headers. Returns the socket and the bytes read past the answer's head;
/// panics unless the answer is `101` with RFC 6455 §1.3's accept value for that key.
pub async fn raw_upgrade(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let headers: String = UPGRADE.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await.expect("in time").expect("read");
        assert!(n > 0, "closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    buf.drain(..head_end);
    (tcp, buf)
}

/// Takes one whole server frame off the front of `buf` — (opcode, payload) — or `None` while it
/// is incomplete. Server frames must be unmasked and final; no test frame needs the 8-byte
/// length.
pub fn take_server_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    assert_eq!(second & 0x80, 0, "server frames are unmasked");
    assert_eq!(first & 0x80, 0x80, "server frames are final");
    let (len, at) = match second & 0x7f {
        127 => panic!("no test message is that long"),
        126 => (usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        n => (usize::from(n), 2),
    };
    if buf.len() < at + len {
        return None;
    }
    let payload = buf[at..at + len].to_vec();
    buf.drain(..at + len);
    Some((first & 0x0f, payload))
}

/// Sends one request to `addr` and reads the whole response within [`STEP`]. `target` is the
/// path with query.
pub async fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    tokio::time::timeout(STEP, request_inner(addr, method, target, headers, body))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

/// One request; fails the test if there is no valid answer.
pub async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(addr, method, target, headers, body).await.unwrap_or_else(|e| panic!("HTTP {method} {target} to {addr}: {e}"))
}

/// `GET target`, or `None` when the server is not (yet, or any more) there: refused, reset, or
/// no answer within 2 s. For probes inside [`super::eventually`].
pub async fn try_get(addr: SocketAddr, target: &str) -> Option<Response> {
    tokio::time::timeout(Duration::from_secs(2), request_inner(addr, "GET", target, &[], b"")).await.ok()?.ok()
}

/// `GET target`.
pub async fn get(addr: SocketAddr, target: &str) -> Response {
    http(addr, "GET", target, &[], b"").await
}

/// `GET target` with `Authorization: Bearer <key>` (reads on a secured hub).
pub async fn get_as(addr: SocketAddr, target: &str, key: &str) -> Response {
    let bearer = format!("Bearer {key}");
    http(addr, "GET", target, &[("authorization", &bearer)], b"").await
}

/// [`try_get`] with `Authorization: Bearer <key>`.
pub async fn try_get_as(addr: SocketAddr, target: &str, key: &str) -> Option<Response> {
    let bearer = format!("Bearer {key}");
    tokio::time::timeout(Duration::from_secs(2), request_inner(addr, "GET", target, &[("authorization", &bearer)], b"")).await.ok()?.ok()
}

/// `GET target` answered 200 with JSON.
pub async fn get_json(addr: SocketAddr, target: &str) -> Value {
    let res = get(addr, target).await;
    assert_eq!(res.status, 200, "GET {target}: {}", res.text());
    serde_json::from_slice(&res.body).unwrap_or_else(|e| panic!("GET {target}: not JSON ({e}): {}", res.text()))
}

/// `POST /v1/rooms/{room}/messages` with an optional API key.
pub async fn publish(addr: SocketAddr, room: &str, key: Option<&str>, body: &[u8]) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http(addr, "POST", &format!("/v1/rooms/{room}/messages"), &headers, body).await
}

/// Publishes and returns the seq, failing the test on any error.
pub async fn publish_ok(addr: SocketAddr, room: &str, key: Option<&str>, body: &[u8]) -> u64 {
    let res = publish(addr, room, key, body).await;
    assert_eq!(res.status, 200, "publish to {room} failed: {}", res.text());
    res.json()["seq"].as_u64().unwrap_or_else(|| panic!("publish answer without seq: {}", res.text()))
}

/// Publishes a JSON body (dev mode, no key) and returns `(seq, epoch)`, checking the status and
/// the epoch's form (16 lowercase hex digits).
pub async fn publish_json(hub: SocketAddr, room: &str, body: &[u8]) -> (u64, String) {
    let res = http(hub, "POST", &format!("/v1/rooms/{room}/messages"), &[("content-type", "application/json")], body).await;
    assert_eq!(res.status, 200, "publish to {room}: {}", res.text());
    let answer = res.json();
    let seq = answer["seq"].as_u64().unwrap_or_else(|| panic!("publish answer without seq: {}", res.text()));
    let epoch = answer["epoch"].as_str().unwrap_or_else(|| panic!("publish answer without epoch: {answer}")).to_owned();
    assert!(is_epoch(&epoch), "publish answer epoch is not 16 lowercase hex digits: {answer}");
    (seq, epoch)
}

/// A JSON payload of about `size` bytes tagged with `n`.
pub fn payload(n: u64, size: usize) -> Vec<u8> {
    format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(size.saturating_sub(20))).into_bytes()
}

/// Asserts an error answer: status, JSON content type, `error` and `reason` present.
pub fn assert_error(res: &Response, status: u16, what: &str) {
    assert_eq!(res.status, status, "{what}: body {}", res.text());
    assert!(res.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{what}: content type");
    let body = res.json();
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: error code in {body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{what}: reason in {body}");
}

/// Every message of `room` in the hub's history (paging by 1000).
pub async fn history(hub: SocketAddr, room: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut since = 0;
    loop {
        let page = get_json(hub, &format!("/v1/rooms/{room}/messages?since={since}&limit=1000")).await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        let Some(last) = messages.last().and_then(|m| m["seq"].as_u64()) else { return out };
        out.extend(messages);
        since = last;
    }
}

/// `GET /metrics` of a hub or a Link's WebSocket port.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let res = get(addr, "/metrics").await;
    assert_eq!(res.status, 200, "GET /metrics: {}", res.text());
    res.text()
}

/// The value of the series `name{labels...}` in a Prometheus rendering (every given label must
/// match; 0 if absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) {
            return value.trim().parse().unwrap_or(0.0);
        }
    }
    0.0
}

/// The value of `name{hub="hub"}` (hub metrics are labelled by hub id: the test binary is one
/// process, so in-process hubs of different tests use different ids).
pub fn hub_metric(text: &str, name: &str, hub: u32) -> f64 {
    metric(text, name, &[("hub", &hub.to_string())])
}

async fn request_inner(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("connection")) {
        head.push_str("connection: close\r\n");
    }
    if !(body.is_empty() && method == "GET") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let written = match stream.write_all(head.as_bytes()).await {
        Ok(()) => stream.write_all(body).await,
        Err(e) => Err(e),
    };
    let mut raw = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let read = loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e),
        }
        // Some servers keep the connection open despite `connection: close`.
        if is_complete(&raw) {
            break Ok(());
        }
    };
    match parse_response(&raw) {
        Ok(response) => Ok(response),
        Err(parse_error) => Err(written.err().or(read.err()).unwrap_or(parse_error)),
    }
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// The response head's end and the value of `name` (lower case) among its headers.
fn head_value(raw: &[u8], name: &str) -> Option<(usize, Option<String>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let value = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim().to_owned());
    Some((end + 4, value))
}

/// True once `raw` holds a whole response with a known length (content-length or chunked).
fn is_complete(raw: &[u8]) -> bool {
    let Some((start, length)) = head_value(raw, "content-length") else { return false };
    if let Some(length) = length {
        return length.parse::<usize>().is_ok_and(|len| raw.len() - start >= len);
    }
    matches!(head_value(raw, "transfer-encoding"), Some((_, Some(te))) if te == "chunked") && raw.ends_with(b"0\r\n\r\n")
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("bad chunk"))?;
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
                .ok_or_else(|| invalid("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| invalid("short chunk"))?);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    } else if let Some(len) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(invalid("short body"));
        }
        body.truncate(len);
    }
    Ok(Response { status, headers, body })
}
