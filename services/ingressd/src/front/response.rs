//! A response's head as the client gets it, and the chunked coding of a body whose length
//! is not known: what hyper's server wrote for the same response (the framing rules of its
//! `role.rs`), and a test for each rule.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::StatusCode;

/// How the client learns where the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// A `204` or `304`: no body, and no `Content-Length` (RFC 9110 §8.6; hyper drops it too).
    None,
    /// A response to `HEAD`: no body. A `Content-Length` sent says what a `GET` would get and
    /// goes as it is; when none was sent, the one given here is written (the length of a body
    /// ingress wrote itself).
    Head(Option<u64>),
    /// A body of this many bytes; any `Content-Length` sent is replaced by it.
    Exact(u64),
    /// A body of unknown length, sent in the chunked coding.
    Chunked,
}

impl Length {
    /// The framing of a response with `status` to a request that was (`to_head`) or was not
    /// a `HEAD`, whose body is `known` bytes long (when known); `None` for a body that still
    /// has to be read.
    pub fn of(status: StatusCode, to_head: bool, known: Option<u64>) -> Length {
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Length::None
        } else if to_head {
            Length::Head(known.filter(|&n| n > 0))
        } else {
            known.map_or(Length::Chunked, Length::Exact)
        }
    }

    /// Whether a body follows the head.
    pub fn has_body(self) -> bool {
        matches!(self, Length::Exact(_) | Length::Chunked)
    }
}

/// Writes the head of a response into `out` (after what is there): the status line,
/// `headers` (already without hop-by-hop ones), the framing `length` asks for, `Date` when
/// the upstream sent none, and `Connection: close` when the connection ends after it.
pub fn write_head(
    status: StatusCode,
    headers: &HeaderMap,
    length: Length,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    // A reason is always written (as hyper does): some parsers expect one.
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    let sent_length = headers.contains_key(header::CONTENT_LENGTH);
    let keep_length = matches!(length, Length::Head(_));
    for (name, value) in headers {
        if !keep_length && name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let write_length = match length {
        Length::Exact(n) => Some(n),
        Length::Head(n) if !sent_length => n,
        _ => None,
    };
    if let Some(n) = write_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if length == Length::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The line that starts a chunk of `len` bytes.
pub fn chunk_start(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:X}\r\n");
}

/// What ends a chunk.
pub const CHUNK_END: &[u8] = b"\r\n";
/// What ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

thread_local! {
    /// The `Date` value, remade once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current time as an HTTP date (RFC 9110 §5.6.7).
fn http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(status: u16, headers: &[(&str, &str)], length: Length, close: bool) -> String {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = b"kept".to_vec();
        write_head(
            StatusCode::from_u16(status).unwrap(),
            &h,
            length,
            close,
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads_say_where_the_body_ends() {
        let date = "date: Sun, 06 Dec 2026 12:00:00 GMT";
        let d = &date[6..];
        assert_eq!(
            head(
                200,
                &[("content-length", "24"), ("date", d)],
                Length::Exact(24),
                false
            ),
            format!("keptHTTP/1.1 200 OK\r\n{date}\r\ncontent-length: 24\r\n\r\n")
        );
        assert_eq!(
            head(
                404,
                &[("date", d), ("x-a", "1"), ("x-a", "2")],
                Length::Chunked,
                true
            ),
            format!(
                "keptHTTP/1.1 404 Not Found\r\n{date}\r\nx-a: 1\r\nx-a: 2\r\n\
                 transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
        );
        // HEAD: the length a GET would get, as sent; or the one of ingress's own body.
        assert_eq!(
            head(
                200,
                &[("content-length", "7"), ("date", d)],
                Length::Head(Some(3)),
                false
            ),
            format!("keptHTTP/1.1 200 OK\r\ncontent-length: 7\r\n{date}\r\n\r\n")
        );
        assert_eq!(
            head(502, &[("date", d)], Length::Head(Some(3)), false),
            format!("keptHTTP/1.1 502 Bad Gateway\r\n{date}\r\ncontent-length: 3\r\n\r\n")
        );
        // 204 and 304: never a length.
        assert_eq!(
            head(
                304,
                &[("content-length", "10"), ("date", d)],
                Length::None,
                false
            ),
            format!("keptHTTP/1.1 304 Not Modified\r\n{date}\r\n\r\n")
        );
        assert_eq!(
            head(599, &[("date", d)], Length::Exact(0), false),
            format!("keptHTTP/1.1 599 <none>\r\n{date}\r\ncontent-length: 0\r\n\r\n")
        );
    }

    #[test]
    fn the_framing_follows_the_status_and_the_method() {
        let ok = StatusCode::OK;
        assert_eq!(
            Length::of(StatusCode::NO_CONTENT, false, Some(0)),
            Length::None
        );
        assert_eq!(
            Length::of(StatusCode::NOT_MODIFIED, true, Some(4)),
            Length::None
        );
        assert_eq!(Length::of(ok, true, Some(4)), Length::Head(Some(4)));
        assert_eq!(Length::of(ok, true, Some(0)), Length::Head(None));
        assert_eq!(Length::of(ok, true, None), Length::Head(None));
        assert_eq!(Length::of(ok, false, Some(0)), Length::Exact(0));
        assert_eq!(Length::of(ok, false, None), Length::Chunked);
        assert!(Length::Chunked.has_body() && !Length::Head(Some(1)).has_body());
    }

    #[test]
    fn a_date_is_added_when_the_upstream_sent_none() {
        let h = head(204, &[], Length::None, false);
        let date = h
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a date");
        let parsed = httpdate::parse_http_date(date).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap();
        assert!(off.as_secs() < 5, "{date}");
    }

    #[test]
    fn numbers_are_written_in_full() {
        for n in [0, 7, 10, 24, 1_000_000, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
        let mut out = Vec::new();
        chunk_start(0x1f40, &mut out);
        assert_eq!(out, b"1F40\r\n");
    }
}
