//! The request head ingressd writes to an upstream, and the response head it reads back.
//!
//! The response head is parsed with `httparse` (as hyper does) and its header values are
//! slices of one copy of the head.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{request, StatusCode, Version};

/// Header fields in a response head, at most (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// A response head's size, at most.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the response head is malformed: {0}")]
    Malformed(httparse::Error),
    #[error("the response head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the response status {0} is not valid")]
    Status(u16),
    #[error("the response has a header name or value that is not valid")]
    Header,
}

/// A response's status line and header fields.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Writes the head of `req` (origin-form target, HTTP/1.1) into `out`.
pub fn write_request(req: &request::Parts, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head from the front of `buf` and takes it out; `None` if more bytes
/// are needed.
///
/// The head is copied out of `buf` (one small allocation) rather than split off it, so
/// `buf` stays the only owner of its memory and is reused for the next response instead of
/// a new 8 KiB buffer being allocated for each.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, HeadError> {
    // Not initialised: filling 100 empty fields for every response costs more than parsing.
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let code = parsed.code.expect("a complete head has a status");
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    // Where each name and value lies in the head (within MAX_HEAD_BYTES), so the values can
    // share its bytes.
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let base = buf.as_ptr() as usize;
    let count = parsed.headers.len();
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (n, v) = (
            h.name.as_ptr() as usize - base,
            h.value.as_ptr() as usize - base,
        );
        *span = [n, n + h.name.len(), v, v + h.value.len()].map(|x| x as u32);
    }
    let head = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    for &[n0, n1, v0, v1] in &spans[..count] {
        let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| HeadError::Header)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| HeadError::Header)?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writes_an_origin_form_http11_head() {
        let req = http::Request::get("/a/b?c=d")
            .header("host", "app.example.com")
            .header("x-forwarded-for", "192.0.2.1")
            .body(())
            .unwrap();
        let mut out = b"left from before".to_vec();
        write_request(&req.into_parts().0, &mut out);
        assert_eq!(
            out,
            b"GET /a/b?c=d HTTP/1.1\r\nhost: app.example.com\r\nx-forwarded-for: 192.0.2.1\r\n\r\n"
        );
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"[..],
        );
        let head = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["content-length"], "5");
        let xa: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(&buf[..], b"hello");

        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\nServer: x\r\n"[..]);
        assert!(
            parse_response(&mut buf).unwrap().is_none(),
            "not complete yet"
        );
        buf.extend_from_slice(b"\r\n");
        let head = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(head.version, Version::HTTP_10);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_heads() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ];
        for b in bad {
            let mut buf = BytesMut::from(&b[..]);
            assert!(
                parse_response(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_response(&mut BytesMut::from(&many[..])).unwrap_err(),
            HeadError::TooManyHeaders
        );
        let mut long = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        long.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(
            parse_response(&mut BytesMut::from(&long[..])).unwrap_err(),
            HeadError::TooLarge
        );
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(input in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut buf = BytesMut::from(&input[..]);
            let before = buf.len();
            match parse_response(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) | Err(_) => prop_assert_eq!(buf.len(), before),
            }
        }

        #[test]
        fn a_written_head_reads_back(
            status in 100u16..600,
            fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?"), 0..10),
        ) {
            let mut text = format!("HTTP/1.1 {status} X\r\n");
            for (k, v) in &fields {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("\r\nbody");
            let mut buf = BytesMut::from(text.as_bytes());
            let head = parse_response(&mut buf).unwrap().unwrap();
            prop_assert_eq!(head.status.as_u16(), status);
            prop_assert_eq!(head.headers.len(), fields.len());
            for (k, v) in &fields {
                prop_assert!(head.headers.get_all(k.as_str()).iter().any(|x| x == v.as_str()));
            }
            prop_assert_eq!(&buf[..], b"body");
        }
    }
}
