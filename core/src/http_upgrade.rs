//! The HTTP/1.1 part of a Link's WebSocket port, sans-IO: request bytes in, a parsed
//! [`RequestHead`] out; response bytes out (errors with the JSON body of docs/protocol.md, and
//! `101 Switching Protocols` with its `Sec-WebSocket-Accept`, RFC 6455 §4.2.2). No sockets, no
//! clocks.
//!
//! Data flow: the Link's upgrade task (`src/link/upgrade.rs`) reads from the socket into one
//! growing buffer and asks a [`HeadScanner`] after each read whether the head is complete (the
//! scanner remembers where it stopped, so a head that trickles in byte by byte costs one pass,
//! not one pass per read); it stops at [`MAX_HEAD`] bytes. [`RequestHead::parse`] then reads the
//! method, path, query and the upgrade headers (`httparse`), and the task decides what to
//! answer; the bytes of every answer come from here. What follows the head in the buffer are
//! the client's first WebSocket frames, if it sent any early ([`RequestHead::len`]).

use base64::Engine;

/// Longest request head accepted before the upgrade.
pub const MAX_HEAD: usize = 8 * 1024;

/// The GUID of RFC 6455 §1.3, appended to the client's key for `Sec-WebSocket-Accept`.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Finds the blank line that ends a request head in a buffer that grows between calls.
#[derive(Debug, Default)]
pub struct HeadScanner {
    /// Bytes of the buffer already searched (the next search starts 3 bytes before, in case
    /// the `\r\n\r\n` straddles two reads).
    scanned: usize,
}

impl HeadScanner {
    /// The length of the head if `buf` holds all of it. `buf` must extend the buffer of the
    /// previous call (same prefix).
    pub fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let from = self.scanned.saturating_sub(3).min(buf.len());
        match buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => Some(from + at + 4),
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }
}

/// What the Link needs from a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method (`GET`).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, without the `?` (empty if none).
    pub query: String,
    /// `Origin`.
    pub origin: Option<String>,
    /// `Upgrade: websocket` was sent.
    pub upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub version: Option<String>,
    /// Bytes of the head (what follows is the client's first frames, if it sent any early).
    pub len: usize,
}

impl RequestHead {
    /// Parses a complete request head at the start of `buf`; `None` if it is malformed or
    /// incomplete, or starts with an empty line: httparse would skip it, but [`HeadScanner`]
    /// takes it for the end of the head, so whether the request got through would depend on how
    /// the reads were cut (found by fuzzing).
    pub fn parse(buf: &[u8]) -> Option<RequestHead> {
        if buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return None,
        };
        let target = request.path?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        Some(RequestHead {
            method: request.method?.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            origin: header("origin").map(str::to_owned),
            upgrade: header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
            key: header("sec-websocket-key").map(str::to_owned),
            version: header("sec-websocket-version").map(str::to_owned),
            len,
        })
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }

    /// The client's `Sec-WebSocket-Key` if this is a WebSocket upgrade the Link speaks
    /// (version 13), else the reason for a 400.
    pub fn websocket_key(&self) -> Result<&str, &'static str> {
        match (&self.key, self.upgrade, self.version.as_deref()) {
            (Some(key), true, Some("13")) => Ok(key),
            (_, true, Some(version)) if version != "13" => Err("unsupported WebSocket version (need 13)"),
            _ => Err("expected a WebSocket upgrade"),
        }
    }
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes and `+` (space) of a query value; a `%` not followed by two hex digits
/// stays as it is; invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                // Exactly two hex digits (`u8::from_str_radix` also took a sign: "%+4" was 0x04).
                let digit = |b: u8| char::from(b).to_digit(16);
                match (digit(bytes[i + 1]), digit(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The `101 Switching Protocols` answer to an upgrade with `key`.
pub fn switching_protocols(key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
}

/// A complete response with `body`, after which the Link closes the connection.
pub fn response(status: u16, content_type: &str, body: &str) -> String {
    let text = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A refusal with the JSON body `{"error","reason"}` of docs/protocol.md.
pub fn error_response(status: u16, error: &str, reason: &str) -> String {
    let body = serde_json::json!({"error": error, "reason": reason}).to_string();
    response(status, "application/json", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_and_queries_parse() {
        let head = b"GET /ws?token=a.b%2Ec&x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nOrigin: https://a\r\n\r\n";
        let parsed = RequestHead::parse(head).expect("valid");
        assert_eq!(parsed.path, "/ws");
        assert!(parsed.upgrade);
        assert_eq!(parsed.origin.as_deref(), Some("https://a"));
        assert_eq!(parsed.len, head.len());
        assert_eq!(parsed.query_param("token").as_deref(), Some("a.b.c"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert!(RequestHead::parse(b"garbage\r\n\r\n").is_none());
        assert!(RequestHead::parse(b"GET / HTTP/1.1\r\nHost: x\r\n").is_none(), "incomplete");
    }

    #[test]
    fn websocket_key_needs_an_upgrade_of_version_13() {
        let head = |extra: &str| {
            RequestHead::parse(format!("GET /ws HTTP/1.1\r\n{extra}\r\n").as_bytes()).expect("valid")
        };
        let ok = head("Upgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n");
        assert_eq!(ok.websocket_key(), Ok("k"));
        let old = head("Upgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 8\r\n");
        assert_eq!(old.websocket_key(), Err("unsupported WebSocket version (need 13)"));
        assert_eq!(head("Host: x\r\n").websocket_key(), Err("expected a WebSocket upgrade"));
    }

    #[test]
    fn accept_key_matches_rfc_6455() {
        // The example of RFC 6455 §1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==").ends_with("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }

    #[test]
    fn the_scanner_finds_a_head_split_across_reads_without_rescanning() {
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\nearly";
        let mut scanner = HeadScanner::default();
        for end in 0..head.len() - 5 {
            assert_eq!(scanner.scan(&head[..end]), None, "not complete at {end}");
        }
        assert_eq!(scanner.scan(&head[..]), Some(head.len() - 5));
        // Byte by byte, the end marker straddling reads.
        let mut scanner = HeadScanner::default();
        let found: Vec<_> = (1..=head.len()).filter_map(|end| scanner.scan(&head[..end])).collect();
        assert_eq!(found.first(), Some(&(head.len() - 5)));
    }

    #[test]
    fn error_responses_carry_the_json_reason() {
        let text = error_response(401, "unauthorized", "token expired");
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(text.ends_with(r#"{"error":"unauthorized","reason":"token expired"}"#));
        assert!(text.contains("Content-Length: 49\r\n"));
    }
}
