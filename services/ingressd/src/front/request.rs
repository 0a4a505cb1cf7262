//! A client's request head: parsed (`httparse`, as hyper's server parses it), sorted into
//! those [`super`] forwards itself and the rest, and written out as the upstream gets it.
//!
//! Only a plain request is taken: HTTP/1.1, no body (neither `Content-Length` nor
//! `Transfer-Encoding`), no `Expect`, no upgrade, one `Host`, an origin-form target of
//! ordinary characters, `Connection` options no other than `keep-alive` and `close`. The
//! head written for the upstream is then the one [`crate::proxy::forward_headers`] makes
//! from the same request (a property test holds the two together).

use std::mem::MaybeUninit;

use http::Method;

/// Header fields in a request head, at most (hyper's limit; past it hyper answers 431).
pub const MAX_HEADERS: usize = 100;

/// A request target's length, at most (hyper's and `http::Uri`'s limit; hyper answers 414).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Whether a head not complete in `buf[..scanned]` may be complete in `buf`: the empty line
/// that ends a head is looked for in the new bytes only (as hyper does), so a head sent a
/// byte at a time is not parsed again for every byte.
pub fn may_be_complete(buf: &[u8], scanned: usize) -> bool {
    // Back up over the bytes of an end that the last read may have cut.
    let new = &buf[scanned.saturating_sub(2).min(buf.len())..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

/// Storage for a head's fields, filled by [`parse`].
pub type Fields<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// An empty [`Fields`].
pub fn fields<'b>() -> Fields<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// What the front of a buffer holds.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// The start of a head within the size limit: more bytes are needed.
    Partial,
    /// A plain request, forwarded by [`super`] itself.
    Plain(Plain<'h, 'b>),
    /// Anything else (malformed, too large, with a body, an upgrade, HTTP/1.0, CONNECT, an
    /// absolute-form target, …): hyper's server reads it.
    Other,
}

/// A plain request's head.
#[derive(Debug)]
pub struct Plain<'h, 'b> {
    /// The head's length in the buffer.
    pub len: usize,
    pub method: Method,
    /// The request target: origin form (`/path?query`).
    pub target: &'b str,
    /// The one `Host` value, as sent.
    pub host: &'b str,
    /// The client asked to close the connection after this response.
    pub close: bool,
    fields: &'h [httparse::Header<'b>],
}

impl Plain<'_, '_> {
    /// The path of the target (without the query).
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }
}

/// Parses the request head at the front of `buf`: at most `max_bytes` long.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut Fields<'b>,
    max_bytes: usize,
) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, fields)
    {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < max_bytes => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if method == "CONNECT" || target.len() > MAX_TARGET || !is_plain_target(target) {
        return Parsed::Other;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    let mut host = None;
    let mut close = false;
    for f in req.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Parsed::Other;
            }
            match std::str::from_utf8(f.value) {
                Ok(h) if is_visible_ascii(f.value) && !h.is_empty() => host = Some(h),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in f.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") && !option.is_empty() {
                    // An option naming another header (to be dropped as hop-by-hop), or
                    // `upgrade`: hyper's path handles those.
                    return Parsed::Other;
                }
            }
        }
    }
    let Some(host) = host else {
        return Parsed::Other;
    };
    Parsed::Plain(Plain {
        len,
        method,
        target,
        host,
        close,
        fields: req.headers,
    })
}

/// An origin-form target made only of characters every parser reads the same way
/// (RFC 3986's unreserved, sub-delims, `:`, `@`, `/`, `?` and `%`); any other goes to hyper,
/// whose URI parser decides.
fn is_plain_target(target: &str) -> bool {
    target.starts_with('/')
        && target.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
}

/// What `HeaderValue::to_str` accepts: visible ASCII, space and tab.
fn is_visible_ascii(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Headers dropped on the way to the upstream (hop-by-hop, RFC 9110 §7.6.1), and the
/// forwarded ones ingressd sets itself.
const DROPPED: [&str; 11] = [
    "connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Writes the head the upstream gets for `req` into `out`: the request line in HTTP/1.1,
/// every header but the hop-by-hop ones, `X-Forwarded-For` (the client's address appended
/// to the first one sent), `X-Forwarded-Proto` and `X-Forwarded-Host` (`host`, normalised).
pub fn write_upstream(
    req: &Plain<'_, '_>,
    tls: bool,
    client_ip: &[u8],
    host: &str,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = false;
    for f in req.fields {
        if DROPPED
            .iter()
            .any(|d| d.len() == f.name.len() && d.eq_ignore_ascii_case(f.name))
        {
            continue;
        }
        if f.name.eq_ignore_ascii_case("x-forwarded-for") {
            if forwarded_for {
                continue;
            }
            forwarded_for = true;
            out.extend_from_slice(b"x-forwarded-for: ");
            if is_visible_ascii(f.value) {
                out.extend_from_slice(f.value);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(client_ip);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    if !forwarded_for {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(client_ip);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if tls {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    out.extend_from_slice(b"x-forwarded-host: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{forward_headers, Via};
    use crate::routes::normalize_host;
    use crate::upstream::head::write_request;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn plain(head: &[u8]) -> Option<(usize, Method, String, String, bool)> {
        let mut f = fields();
        match parse(head, &mut f, 64 * 1024) {
            Parsed::Plain(p) => Some((
                p.len,
                p.method.clone(),
                p.target.to_string(),
                p.host.to_string(),
                p.close,
            )),
            _ => None,
        }
    }

    #[test]
    fn a_plain_request_is_taken() {
        let head =
            b"GET /a/b?c=d HTTP/1.1\r\nHost: app.example.com\r\nAccept: */*\r\n\r\nGET /next";
        let (len, method, target, host, close) = plain(head).unwrap();
        assert_eq!(len, head.len() - b"GET /next".len());
        assert_eq!(method, Method::GET);
        assert_eq!(target, "/a/b?c=d");
        assert_eq!(host, "app.example.com");
        assert!(!close);
        let close = plain(b"HEAD / HTTP/1.1\r\nhost: a\r\nConnection: Keep-Alive, Close\r\n\r\n");
        assert!(close.unwrap().4);
    }

    #[test]
    fn only_complete_heads_within_the_limit_are_taken() {
        let mut f = fields();
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut f, 64),
            Parsed::Partial
        ));
        let mut f = fields();
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &mut f, 64),
            Parsed::Other
        ));
        let mut f = fields();
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", &mut f, 64),
            Parsed::Other
        ));
    }

    #[test]
    fn a_head_is_parsed_again_only_once_its_end_may_have_come() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut parses = 0;
        let mut scanned = 0;
        for n in 1..=head.len() {
            if scanned == 0 || may_be_complete(&head[..n], scanned) {
                parses += 1;
                let mut f = fields();
                match parse(&head[..n], &mut f, 1024) {
                    Parsed::Partial => {}
                    Parsed::Plain(p) => {
                        assert_eq!(p.len, head.len());
                        break;
                    }
                    Parsed::Other => panic!("{n}"),
                }
            }
            scanned = n;
        }
        assert_eq!(parses, 2, "once at the first byte, once at the end");
        for end in [&b"\n\n"[..], b"\r\n\r\n", b"\n\r\n"] {
            let mut buf = b"GET / HTTP/1.1\r\nHost: a".to_vec();
            let scanned = buf.len() + 1;
            buf.extend_from_slice(end);
            for cut in 1..end.len() {
                assert!(
                    may_be_complete(&buf, scanned - 1 + cut),
                    "{end:?} cut after {cut}"
                );
            }
        }
        assert!(!may_be_complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n",
            20
        ));
    }

    #[test]
    fn everything_not_plain_goes_to_hyper() {
        let others: &[&[u8]] = &[
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for o in others {
            assert!(plain(o).is_none(), "{:?}", String::from_utf8_lossy(o));
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(plain(&many).is_none(), "too many fields");
    }

    #[test]
    fn the_upstream_head_drops_hop_by_hop_fields_and_sets_the_forwarded_ones() {
        let head = b"GET /x HTTP/1.1\r\nHost: App.Example.com:80\r\nConnection: keep-alive\r\n\
            Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 192.0.2.1\r\n\
            X-Forwarded-For: 192.0.2.2\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil\r\n\
            Accept: */*\r\n\r\n";
        let mut f = fields();
        let Parsed::Plain(p) = parse(head, &mut f, 64 * 1024) else {
            panic!("plain")
        };
        let mut out = Vec::new();
        write_upstream(&p, true, b"198.51.100.7", "app.example.com", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nHost: App.Example.com:80\r\n\
             x-forwarded-for: 192.0.2.1, 198.51.100.7\r\nAccept: */*\r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: app.example.com\r\n\r\n"
        );
    }

    fn fields_by_name(head: &[u8]) -> (String, String, BTreeMap<String, Vec<Vec<u8>>>) {
        let mut f = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut f);
        assert!(r.parse(head).unwrap().is_complete());
        let mut by_name: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for h in r.headers.iter() {
            by_name
                .entry(h.name.to_ascii_lowercase())
                .or_default()
                .push(h.value.to_vec());
        }
        (r.method.unwrap().into(), r.path.unwrap().into(), by_name)
    }

    const NAMES: &[&str] = &[
        "Accept",
        "accept",
        "X-Custom",
        "Cookie",
        "TE",
        "Trailer",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "X-Forwarded-For",
        "x-forwarded-for",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "User-Agent",
    ];

    proptest! {
        #[test]
        fn the_upstream_head_is_the_one_hypers_path_makes(
            method in prop::sample::select(vec!["GET", "HEAD", "DELETE", "OPTIONS", "PURGE"]),
            target in "/[a-zA-Z0-9/._~%:@!$&'()*+,;=-]{0,20}(\\?[a-z0-9=&/?]{0,10})?",
            host in "[a-zA-Z]{1,8}\\.example\\.com(\\.|:8080)?",
            extra in proptest::collection::vec(
                (prop::sample::select(NAMES), "[!-~]([ -~\u{e9}]{0,20}[!-~])?"),
                0..8,
            ),
            close in any::<bool>(),
            tls in any::<bool>(),
        ) {
            let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
            for (k, v) in &extra {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            if close {
                text.push_str("Connection: keep-alive, close\r\n");
            }
            text.push_str("\r\n");
            let via = Via::new(tls, "198.51.100.7:4242".parse().unwrap());
            let normalized = normalize_host(&host).unwrap();

            let mut f = fields();
            let Parsed::Plain(p) = parse(text.as_bytes(), &mut f, 64 * 1024) else {
                panic!("not plain: {text:?}");
            };
            prop_assert_eq!(p.close, close);
            let mut fast = Vec::new();
            write_upstream(&p, tls, via.client_ip(), &normalized, &mut fast);

            let mut req = http::Request::builder().method(method).uri(&target);
            req = req.header("host", &host);
            for (k, v) in &extra {
                req = req.header(*k, v.as_bytes());
            }
            if close {
                req = req.header("connection", "keep-alive, close");
            }
            let (mut parts, ()) = req.body(()).unwrap().into_parts();
            forward_headers(&mut parts.headers, None, normalized.clone(), &via, None).unwrap();
            let mut hyper_path = Vec::new();
            write_request(&parts, &mut hyper_path);

            prop_assert_eq!(fields_by_name(&fast), fields_by_name(&hyper_path));
        }
    }
}
