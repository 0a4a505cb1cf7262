//! Writes a response to the client: its head ([`super::response`]) and its body, whole or
//! as it arrives.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Context;

use http::Response;
use hyper::body::Body as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::response::{self, Length};
use crate::proxy::Body;

/// A body, or a piece of one, up to this size goes out in the same write as what precedes
/// it; a larger one is written on its own rather than copied.
const COPY_AT_MOST: usize = 16 * 1024;

/// Writes `response` (to a `HEAD` request when `to_head`; `close`: the connection ends after
/// it); `false` if the connection cannot take another request (a write failed, or the body
/// was cut short).
pub async fn reply<S>(
    io: &mut S,
    response: Response<Body>,
    to_head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> bool
where
    S: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    out.clear();
    let whole = match &mut body {
        Body::Full(b) => Some(b.take().unwrap_or_default()),
        _ => None,
    };
    let known = match &whole {
        Some(data) => Some(data.len() as u64),
        None => body.size_hint().exact(),
    };
    let length = Length::of(parts.status, to_head, known);
    response::write_head(parts.status, &parts.headers, length, close, out);
    if !length.has_body() {
        return send(io, out, &[], &[]).await;
    }
    if let Some(data) = whole {
        return send(io, out, &data, &[]).await;
    }
    if !send(io, out, &[], &[]).await {
        return false;
    }
    loop {
        let frame = poll_fn(|cx: &mut Context<'_>| Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
            // The client's response is cut short: the connection ends.
            Some(Err(_)) => return false,
        };
        out.clear();
        let sent = if length == Length::Chunked {
            response::chunk_start(data.len(), out);
            send(io, out, &data, response::CHUNK_END).await
        } else {
            send(io, out, &data, &[]).await
        };
        if !sent {
            return false;
        }
    }
    if length == Length::Chunked {
        out.clear();
        out.extend_from_slice(response::LAST_CHUNK);
        return send(io, out, &[], &[]).await;
    }
    true
}

/// Writes `out`, then `data`, then `end`, and flushes (a TLS stream holds what is written
/// until flushed). A small `data` is copied after `out` so all goes in one write; a large
/// one is written on its own rather than copied.
async fn send<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    data: &[u8],
    end: &[u8],
) -> bool {
    let sent = if data.len() <= COPY_AT_MOST {
        out.extend_from_slice(data);
        out.extend_from_slice(end);
        io.write_all(out).await
    } else {
        async {
            io.write_all(out).await?;
            io.write_all(data).await?;
            io.write_all(end).await
        }
        .await
    };
    sent.is_ok() && io.flush().await.is_ok()
}
