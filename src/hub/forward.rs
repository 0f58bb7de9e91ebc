//! Forwarding between hubs, and the minimal HTTP/1.1 client it uses.
//!
//! Each room has one owner hub (`uplink::HubDirectory`), the only one that sequences it. A hub
//! that receives a request for a room it does not own — publish, room info, history, locate —
//! passes it on to the owner's HTTP address (from `[[hubs]]`) with the same method, path, query,
//! API key, `X-Linkcast-From` and body, and returns the owner's status and JSON body unchanged.
//! The forwarded request carries `X-Linkcast-Forwarded: <hub id>`; a hub receiving one for a
//! room it does not own answers 503 instead of forwarding again (hubs disagreeing about
//! ownership means their configs differ), so a publish is never sequenced twice and never
//! loops.
//!
//! The client is deliberately small (one connection per request, `Connection: close`,
//! bounded response size, a timeout): forwarding happens only when a publisher talks to the
//! wrong hub, and the same client serves the integration tests. It is public for that reason.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header marking a request forwarded by another hub.
pub const FORWARDED_HEADER: &str = "x-linkcast-forwarded";

/// Largest response body the client accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Time a forwarded request may take end to end.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response as the client read it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Bytes,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `addr` and reads the whole response (bounded by
/// [`MAX_RESPONSE_BYTES`] and [`FORWARD_TIMEOUT`]). `target` is the path with query.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    tokio::time::timeout(FORWARD_TIMEOUT, request_inner(addr, method, target, headers, body))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "http request timed out"))?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        if name.contains(['\r', '\n']) || value.contains(['\r', '\n']) {
            return Err(invalid("header contains a line break"));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // A server may answer (413, 401) and close before reading a large body: a failed write
    // is reported only if no response can be read afterwards.
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
        // Some servers keep the connection open despite `connection: close`: stop as soon as
        // the response is complete.
        if is_complete(&raw) {
            break Ok(());
        }
        if raw.len() > MAX_RESPONSE_BYTES + 64 * 1024 {
            return Err(invalid("response too large"));
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

/// True once `raw` holds a whole response with a known length (content-length or chunked).
fn is_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim() {
                "content-length" => return value.trim().parse::<usize>().is_ok_and(|len| body.len() >= len),
                "transfer-encoding" if value.trim() == "chunked" => return body.ends_with(b"0\r\n\r\n"),
                _ => {}
            }
        }
    }
    false
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| invalid("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        match headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()) {
            Some(len) if len <= rest.len() => rest[..len].to_vec(),
            Some(_) => return Err(invalid("body shorter than content-length")),
            None => rest.to_vec(),
        }
    };
    Ok(HttpResponse { status, headers, body: Bytes::from(body) })
}

fn dechunk(mut rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("bad chunk"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| invalid("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello").expect("valid");
        assert_eq!((plain.status, plain.header("x-a"), &plain.body[..]), (200, Some("b"), &b"hello"[..]));
        let chunked =
            parse_response(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .expect("valid");
        assert_eq!((chunked.status, &chunked.body[..]), (404, &b"abcde"[..]));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(is_complete(b"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\nhello"));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\nhel"));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nno length: read to the end"));
    }
}
