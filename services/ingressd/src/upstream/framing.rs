//! Where an upstream's response body ends (RFC 9112 §6.3), and whether its connection can
//! take another request.
//!
//! Anything ambiguous is an error (the response becomes a 502 and the connection is
//! dropped), as nginx does: both `Transfer-Encoding` and `Content-Length`, a transfer coding
//! other than `chunked` alone, or `Content-Length` values that disagree. Reading such a
//! response one way while the upstream meant another would hand the rest of it to the next
//! client of the connection.

use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, whatever the headers say (a response to HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the response has both Transfer-Encoding and Content-Length")]
    Both,
    #[error("the response's Transfer-Encoding is not chunked alone")]
    Coding,
    #[error("the response's Content-Length is not one number")]
    Length,
    #[error("an HTTP/1.0 response has a Transfer-Encoding")]
    CodingInHttp10,
}

/// How the body of a response with `status` and `headers` is framed. A `Content-Length`
/// sent as a list of one number (`24, 24`, or the header twice) becomes that number, as
/// RFC 9110 §8.6 asks of a proxy.
pub fn response_framing(
    to_head: bool,
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<Framing, FramingError> {
    if to_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let coding = headers.contains_key(header::TRANSFER_ENCODING);
    let length = content_length(headers)?;
    match (coding, length) {
        (true, Some(_)) => Err(FramingError::Both),
        (true, None) if version == Version::HTTP_10 => Err(FramingError::CodingInHttp10),
        (true, None) => {
            let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
            let only = values.next().filter(|_| values.next().is_none());
            match only.map(|v| v.as_bytes().trim_ascii()) {
                Some(v) if v.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
                _ => Err(FramingError::Coding),
            }
        }
        (false, Some((n, items))) => {
            if items > 1 {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok(Framing::Length(n))
        }
        (false, None) => Ok(Framing::UntilClose),
    }
}

/// The `Content-Length`, if any, and how many values and list items gave it: every one must
/// be the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<(u64, usize)>, FramingError> {
    let mut found = None;
    let mut items = 0;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for item in v.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::Length);
            }
            let n: u64 = std::str::from_utf8(item)
                .expect("digits")
                .parse()
                .map_err(|_| FramingError::Length)?;
            if found.is_some_and(|f| f != n) {
                return Err(FramingError::Length);
            }
            found = Some(n);
            items += 1;
        }
    }
    Ok(found.map(|n| (n, items)))
}

/// Whether the upstream keeps the connection open after this response: HTTP/1.1 unless it
/// says `Connection: close`, HTTP/1.0 only if it says `Connection: keep-alive`.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_body_ends_where_rfc_9112_says() {
        use Framing::*;
        let ok = StatusCode::OK;
        let v11 = Version::HTTP_11;
        /// To a HEAD request?, status, headers, what framing.
        type Case<'a> = (
            bool,
            u16,
            &'a [(&'a str, &'a str)],
            Result<Framing, FramingError>,
        );
        let cases: &[Case] = &[
            (false, 200, &[("content-length", "24")], Ok(Length(24))),
            (false, 200, &[("content-length", "24, 24")], Ok(Length(24))),
            (false, 200, &[("content-length", "0")], Ok(Length(0))),
            (
                false,
                200,
                &[("content-length", "24"), ("content-length", "24")],
                Ok(Length(24)),
            ),
            (false, 200, &[("transfer-encoding", "chunked")], Ok(Chunked)),
            (
                false,
                200,
                &[("transfer-encoding", " Chunked ")],
                Ok(Chunked),
            ),
            (false, 200, &[], Ok(UntilClose)),
            // No body, whatever the headers say.
            (true, 200, &[("content-length", "24")], Ok(Empty)),
            (true, 200, &[("transfer-encoding", "chunked")], Ok(Empty)),
            (false, 204, &[("content-length", "24")], Ok(Empty)),
            (false, 304, &[("content-length", "24")], Ok(Empty)),
            (false, 103, &[], Ok(Empty)),
            // Ambiguous: refused.
            (
                false,
                200,
                &[("content-length", "3"), ("transfer-encoding", "chunked")],
                Err(FramingError::Both),
            ),
            (
                false,
                200,
                &[("content-length", "3, 4")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("content-length", "3"), ("content-length", "4")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("content-length", "+3")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("content-length", "-1")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("content-length", "")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("content-length", "3,")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("content-length", "99999999999999999999")],
                Err(FramingError::Length),
            ),
            (
                false,
                200,
                &[("transfer-encoding", "gzip, chunked")],
                Err(FramingError::Coding),
            ),
            (
                false,
                200,
                &[("transfer-encoding", "chunked, gzip")],
                Err(FramingError::Coding),
            ),
            (
                false,
                200,
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(FramingError::Coding),
            ),
            (
                false,
                200,
                &[("transfer-encoding", "identity")],
                Err(FramingError::Coding),
            ),
        ];
        for (to_head, status, h, want) in cases {
            let status = StatusCode::from_u16(*status).unwrap();
            let mut map = headers(h);
            let got = response_framing(*to_head, status, v11, &mut map);
            assert_eq!(&got, want, "{to_head} {status} {h:?}");
            if let Ok(Length(n)) = got {
                let values: Vec<_> = map.get_all(header::CONTENT_LENGTH).iter().collect();
                assert_eq!(values, [n.to_string().as_str()], "one length is forwarded");
            }
        }
        assert_eq!(
            response_framing(
                false,
                ok,
                Version::HTTP_10,
                &mut headers(&[("transfer-encoding", "chunked")])
            ),
            Err(FramingError::CodingInHttp10)
        );
    }

    #[test]
    fn http11_keeps_alive_unless_told_and_http10_only_when_told() {
        let v11 = Version::HTTP_11;
        let v10 = Version::HTTP_10;
        assert!(keeps_alive(v11, &headers(&[])));
        assert!(keeps_alive(v11, &headers(&[("connection", "keep-alive")])));
        assert!(!keeps_alive(v11, &headers(&[("connection", "Close")])));
        assert!(!keeps_alive(v11, &headers(&[("connection", "x, close")])));
        assert!(!keeps_alive(v10, &headers(&[])));
        assert!(keeps_alive(v10, &headers(&[("connection", "Keep-Alive")])));
    }
}
