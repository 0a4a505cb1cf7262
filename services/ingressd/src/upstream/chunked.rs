//! The chunked transfer coding of a response body (RFC 9112 §7.1), decoded as it arrives.
//!
//! Strict where leniency would let an upstream's framing be read two ways: a chunk size is
//! hex digits only (at most 16), every line ends in CRLF (a bare LF is an error), and the
//! data of each chunk must be followed by CRLF. Chunk extensions and trailer fields are
//! read past and dropped (as nginx does), within bounds. The decoder takes only the bytes of
//! its own body from the buffer, so what follows (the next response on a kept-alive
//! connection) stays where it was.

use bytes::{Buf, Bytes, BytesMut};

/// Chunk extensions and trailer fields of one body, in bytes, at most.
const MAX_EXTRA_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("a chunk size is not a hex number")]
    Size,
    #[error("a chunk size is too large")]
    TooLarge,
    #[error("a chunk line does not end in CRLF")]
    LineEnd,
    #[error("a chunk's data is not followed by CRLF")]
    DataEnd,
    #[error("chunk extensions or trailer fields exceed {MAX_EXTRA_BYTES} bytes")]
    TooMuchExtra,
}

/// What one step of decoding found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body data (never empty).
    Data(Bytes),
    /// The buffer is used up: read more into it.
    More,
    /// The body ended (its last chunk and trailer section were read).
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk size: its value so far and how many digits it had.
    Size(u64, u8),
    /// Whitespace after the size.
    SizeSpace(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    /// The LF ending a chunk-size line.
    SizeLf(u64),
    /// Data left in the current chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the empty line ending the body).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    extra: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size(0, 0),
            extra: 0,
        }
    }
}

impl Decoder {
    /// Decodes from the front of `buf`, taking what it used.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkedError> {
        loop {
            if let State::Data(left) = self.state {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64) as usize;
                let rest = left - n as u64;
                self.state = if rest == 0 {
                    State::DataCr
                } else {
                    State::Data(rest)
                };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            if self.state == State::Done {
                return Ok(Step::End);
            }
            let Some(&b) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.state = self.next(b)?;
        }
    }

    /// The state after control byte `b`.
    fn next(&mut self, b: u8) -> Result<State, ChunkedError> {
        use State::*;
        Ok(match (self.state, b) {
            (Size(v, digits), _) if (b as char).is_ascii_hexdigit() => {
                if digits == 16 {
                    return Err(ChunkedError::TooLarge);
                }
                let d = (b as char).to_digit(16).expect("a hex digit") as u64;
                Size(v << 4 | d, digits + 1)
            }
            (Size(_, 0), _) => return Err(ChunkedError::Size),
            (Size(v, _) | SizeSpace(v), b' ' | b'\t') => {
                self.more_extra()?;
                SizeSpace(v)
            }
            (Size(v, _) | SizeSpace(v), b';') => {
                self.more_extra()?;
                Extension(v)
            }
            (Size(v, _) | SizeSpace(v) | Extension(v), b'\r') => SizeLf(v),
            (Size(..) | SizeSpace(_), _) => return Err(ChunkedError::Size),
            (Extension(_), b'\n') => return Err(ChunkedError::LineEnd),
            (Extension(v), _) => {
                self.more_extra()?;
                Extension(v)
            }
            (SizeLf(0), b'\n') => TrailerStart,
            (SizeLf(v), b'\n') => Data(v),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(ChunkedError::DataEnd),
            (DataLf, b'\n') => Size(0, 0),
            (DataLf, _) => return Err(ChunkedError::DataEnd),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart | TrailerLine, b'\n') => return Err(ChunkedError::LineEnd),
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, _) => {
                self.more_extra()?;
                TrailerLine
            }
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            (SizeLf(_) | TrailerLf | EndLf, _) => return Err(ChunkedError::LineEnd),
            (Data(_) | Done, _) => unreachable!("data and the end are not read byte by byte"),
        })
    }

    fn more_extra(&mut self) -> Result<(), ChunkedError> {
        self.extra += 1;
        if self.extra > MAX_EXTRA_BYTES {
            return Err(ChunkedError::TooMuchExtra);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in pieces of the given sizes: the body, and what was left after it.
    fn decode(input: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        let mut sizes = pieces.iter().copied().cycle();
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => {
                    assert!(!b.is_empty());
                    body.extend_from_slice(&b)
                }
                Step::End => return Ok((body, buf.to_vec())),
                Step::More => {
                    assert!(fed < input.len(), "ran out of input before the end");
                    let n = sizes.next().unwrap_or(1).max(1).min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers_and_leaves_what_follows() {
        let input = b"5;name=\"v\"\r\nhello\r\n1 ; x\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\nHTTP/1.1";
        let (body, rest) = decode(input, &[usize::MAX]).unwrap();
        assert_eq!(body, b"hello 0123456789");
        assert_eq!(rest, b"HTTP/1.1");
        let (body, rest) = decode(input, &[1]).unwrap();
        assert_eq!(body, b"hello 0123456789");
        assert_eq!(rest, b"", "byte by byte, nothing past the end is fed");
    }

    #[test]
    fn rejects_what_could_be_read_two_ways() {
        let bad: &[(&[u8], ChunkedError)] = &[
            (b"\r\n", ChunkedError::Size),
            (b"x\r\n", ChunkedError::Size),
            (b"-1\r\n", ChunkedError::Size),
            (b"+5\r\nhello\r\n", ChunkedError::Size),
            (b"5\nhello\r\n", ChunkedError::Size),
            (b"5\r\rhello", ChunkedError::LineEnd),
            (b"5;a\nhello", ChunkedError::LineEnd),
            (b"5\r\nhelloX\r\n", ChunkedError::DataEnd),
            (b"5\r\nhello\rX", ChunkedError::DataEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkedError::DataEnd),
            (b"5 5\r\n", ChunkedError::Size),
            (b"0x5\r\n", ChunkedError::Size),
            (b"10000000000000000\r\n", ChunkedError::TooLarge),
            (b"0\r\n\n", ChunkedError::LineEnd),
            (b"0\r\nX: 1\n\r\n", ChunkedError::LineEnd),
            (b"0\r\n\rX", ChunkedError::LineEnd),
        ];
        for (input, want) in bad {
            let got = decode(input, &[usize::MAX]);
            assert_eq!(
                got,
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let huge = format!("1;{}\r\n", "e".repeat(MAX_EXTRA_BYTES + 1));
        assert_eq!(
            decode(huge.as_bytes(), &[usize::MAX]),
            Err(ChunkedError::TooMuchExtra)
        );
        // The largest size that fits is accepted (then more is needed).
        let mut d = Decoder::default();
        let mut b = BytesMut::from(&b"ffffffffffffffff\r\n"[..]);
        assert_eq!(d.step(&mut b), Ok(Step::More));
    }

    /// `body` in chunks of the given sizes, with an extension or whitespace now and then, and
    /// trailer fields.
    fn encode(body: &[u8], sizes: &[usize], decorate: bool, trailers: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let n = sizes[i % sizes.len()].clamp(1, body.len() - at);
            let size = if i % 2 == 0 {
                format!("{n:x}")
            } else {
                format!("{n:X}")
            };
            let ext = match (decorate, i % 3) {
                (true, 0) => ";a=b",
                (true, 1) => " \t",
                (true, _) => " ; q=\"x y\"",
                _ => "",
            };
            out.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
            out.extend_from_slice(&body[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
            i += 1;
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(format!("{t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #[test]
        fn what_is_encoded_decodes_whatever_the_pieces_it_arrives_in(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            pieces in proptest::collection::vec(1usize..900, 1..8),
            decorate in any::<bool>(),
            trailers in proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3),
            next in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut input = encode(&body, &sizes, decorate, &trailers);
            let end = input.len();
            input.extend_from_slice(&next);
            let (got, _) = decode(&input[..end], &pieces).unwrap();
            prop_assert_eq!(&got, &body);
            // Whatever follows the body is left in the buffer, untouched.
            let (got, rest) = decode(&input, &[usize::MAX]).unwrap();
            prop_assert_eq!(&got, &body);
            prop_assert_eq!(rest, next);
        }

        #[test]
        fn any_bytes_end_in_data_an_error_or_a_request_for_more(
            input in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut d = Decoder::default();
            let mut buf = BytesMut::from(&input[..]);
            for _ in 0..input.len() + 2 {
                match d.step(&mut buf) {
                    Ok(Step::Data(b)) => prop_assert!(!b.is_empty()),
                    Ok(Step::More) | Ok(Step::End) | Err(_) => break,
                }
            }
        }
    }
}
