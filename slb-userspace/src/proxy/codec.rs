//! HTTP/1.x message pieces both sides of the proxy use (RFC 9112): header fields taken from a
//! parsed head without copying their values, body framing and its decoder, chunk encoding.
use std::{
    io::{self, ErrorKind},
    ops::Range,
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    body::SizeHint,
    header::{HeaderName, HeaderValue},
    HeaderMap,
};

/// A head larger than this, or with more fields, is refused, as nginx's `proxy_buffer_size`
/// and `large_client_header_buffers` do.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_FIELDS: usize = 100;
/// Read size from a socket.
pub const READ_SIZE: usize = 16 * 1024;

pub fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}

/// The fields httparse found in a head: names, and where each value is in the head's bytes.
pub struct Fields(Vec<(HeaderName, Range<usize>)>);

impl Fields {
    pub fn of(parsed: &[httparse::Header<'_>], buf: &[u8]) -> io::Result<Fields> {
        let start = buf.as_ptr() as usize;
        let mut spans = Vec::with_capacity(parsed.len());
        for f in parsed {
            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(invalid)?;
            let at = f.value.as_ptr() as usize - start;
            spans.push((name, at..at + f.value.len()));
        }
        Ok(Fields(spans))
    }

    /// Takes the head, its first `len` bytes, off `buf`. The values share the head's bytes
    /// rather than each taking a copy.
    pub fn take(self, buf: &mut BytesMut, len: usize) -> io::Result<HeaderMap> {
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(self.0.len());
        for (name, span) in self.0 {
            let value = HeaderValue::from_maybe_shared(head.slice(span)).map_err(invalid)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// One chunk of a chunked body: size line, data and CRLF, for one vectored write.
pub fn chunk(data: Bytes) -> impl Buf {
    Bytes::from(format!("{:x}\r\n", data.len()))
        .chain(data)
        .chain(&b"\r\n"[..])
}

/// How a body is delimited (RFC 9112 §6.3), and how far its reader is.
pub enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes.
    Close,
}

/// Where a chunked body's reader is.
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// This many bytes of chunk data left, then its CRLF.
    Data(u64),
    /// After the last chunk: trailer lines until the empty one.
    Trailers,
    Done,
}

impl Framing {
    pub fn done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Framing::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }

    /// What the peer closing the connection means: the end of a close-delimited body, an
    /// error for any other unfinished one.
    pub fn at_eof(&self) -> io::Result<()> {
        match self {
            Framing::Close => Ok(()),
            _ => Err(ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Takes the next piece of body data off `buf`, or `None` when more must be read first
    /// (or the body is done). Chunk framing and trailers are consumed and dropped.
    pub fn next_data(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            match self {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left))
                    if !buf.is_empty() && *left > 0 =>
                {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= n as u64;
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                Framing::Close if !buf.is_empty() => return Ok(Some(buf.split().freeze())),
                Framing::Chunked(state) => {
                    let Some(line) = buf.iter().position(|b| *b == b'\n') else {
                        return Ok(None);
                    };
                    let text = std::str::from_utf8(&buf[..line])
                        .map_err(|_| invalid("bad chunk"))?
                        .trim_end_matches('\r');
                    *state = match state {
                        Chunk::Size => {
                            let size = text.split(';').next().unwrap_or("").trim();
                            match u64::from_str_radix(size, 16) {
                                Ok(0) => Chunk::Trailers,
                                Ok(n) => Chunk::Data(n),
                                Err(_) => return Err(invalid("bad chunk size")),
                            }
                        }
                        // The CRLF after a chunk's data.
                        Chunk::Data(_) => Chunk::Size,
                        Chunk::Trailers if text.is_empty() => Chunk::Done,
                        Chunk::Trailers => Chunk::Trailers,
                        Chunk::Done => Chunk::Done,
                    };
                    buf.advance(line + 1);
                }
                _ => return Ok(None),
            }
        }
    }
}
