//! HTTP/1.x message pieces both sides of the proxy use (RFC 9112): header fields taken from a
//! parsed head without copying their values, body framing and its decoder, chunk encoding.
use std::{
    future::Future as _,
    io::{self, ErrorKind},
    ops::Range,
    task::{ready, Context, Poll},
};

use arrayvec::ArrayVec;
use bytes::{Buf, BufMut as _, Bytes, BytesMut};
use hyper::{
    body::{Frame, SizeHint},
    header::{HeaderName, HeaderValue},
    HeaderMap,
};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::forward::BodyError;

/// A head larger than this, or with more fields, is refused, as nginx's `proxy_buffer_size`
/// and `large_client_header_buffers` do.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_FIELDS: usize = 100;
/// Read size from a socket.
pub const READ_SIZE: usize = 16 * 1024;

pub fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}

/// Fields a proxy adds to a message (X-Forwarded-*, SLB-*, a cookie), room for which is made
/// up front.
const ADDED_FIELDS: usize = 8;

/// A field name the proxy acts on. A name is told apart by its length before its bytes are
/// compared, so that the fields the proxy ignores, most of them, cost one comparison each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Name {
    Connection,
    ContentLength,
    TransferEncoding,
    Upgrade,
    Date,
    /// Keep-Alive, Proxy-Connection, Proxy-Authenticate, TE or Trailer.
    HopByHop,
    Other,
}

impl Name {
    pub fn of(name: &[u8]) -> Name {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            2 if is("te") => Name::HopByHop,
            4 if is("date") => Name::Date,
            7 if is("upgrade") => Name::Upgrade,
            7 if is("trailer") => Name::HopByHop,
            10 if is("connection") => Name::Connection,
            10 if is("keep-alive") => Name::HopByHop,
            14 if is("content-length") => Name::ContentLength,
            16 if is("proxy-connection") => Name::HopByHop,
            17 if is("transfer-encoding") => Name::TransferEncoding,
            18 if is("proxy-authenticate") => Name::HopByHop,
            _ => Name::Other,
        }
    }

    /// Whether the field describes one hop's connection rather than the message (RFC 9110
    /// §7.6.1); HTTP/1.x heads and HTTP/2 requests lose these on their way to a backend.
    pub fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::TransferEncoding | Name::Upgrade | Name::HopByHop
        )
    }
}

/// What a head's fields say about its connection and its body.
#[derive(Default)]
pub struct Summary<'a> {
    pub connection: Connection,
    pub body: BodyFields<'a>,
    /// The first `Upgrade` value.
    pub upgrade: Option<&'a [u8]>,
}

/// Where a field httparse found is in its head's bytes, and what its name is.
#[derive(Clone, Copy)]
struct Span {
    name: Name,
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

/// The fields of a head, as where they are in its bytes. Kept on the stack and left
/// uninitialised past the fields a head has (at most [`MAX_FIELDS`]).
#[derive(Default)]
pub struct Fields {
    spans: ArrayVec<Span, MAX_FIELDS>,
}

impl Fields {
    /// Reads `parsed`, the fields of the head in `buf`, in one pass: notes where those that go
    /// on are, and returns what they say. The hop-by-hop ones do not go on unless
    /// `keep_hop_by_hop` (a switch of protocols keeps them: they are the client's).
    pub fn read<'a>(
        &mut self,
        parsed: &[httparse::Header<'a>],
        buf: &[u8],
        keep_hop_by_hop: bool,
    ) -> Summary<'a> {
        let start = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - start) as u32;
        let mut summary = Summary::default();
        self.spans.clear();
        for f in parsed {
            let name = Name::of(f.name.as_bytes());
            match name {
                Name::Connection => summary.connection.read(f.value),
                Name::ContentLength => {
                    summary.body.lengths += 1;
                    summary.body.length = summary.body.length.or(Some(f.value));
                }
                Name::TransferEncoding => summary.body.coding = list(f.value).next_back(),
                Name::Upgrade => summary.upgrade = summary.upgrade.or(Some(f.value)),
                _ => {}
            }
            if name.hop_by_hop() && !keep_hop_by_hop {
                continue;
            }
            let span = Span {
                name,
                name_at: at(f.name.as_bytes()),
                name_len: f.name.len() as u32,
                value_at: at(f.value),
                value_len: f.value.len() as u32,
            };
            if self.spans.try_push(span).is_err() {
                break; // httparse gives at most MAX_FIELDS.
            }
        }
        if summary.connection.names_fields && !keep_hop_by_hop {
            // Fields that Connection names are hop-by-hop too.
            let named = |span: &Span| {
                let name = &buf[span.name_at as usize..][..span.name_len as usize];
                parsed
                    .iter()
                    .filter(|f| Name::of(f.name.as_bytes()) == Name::Connection)
                    .flat_map(|f| list(f.value))
                    .any(|t| t.eq_ignore_ascii_case(name))
            };
            self.spans.retain(|span| !named(span));
        }
        summary
    }

    /// Where each field's name and value are in the head.
    fn ranges(&self) -> impl Iterator<Item = (Name, Range<usize>, Range<usize>)> + '_ {
        self.spans.iter().map(|span| {
            let (name_at, value_at) = (span.name_at as usize, span.value_at as usize);
            (
                span.name,
                name_at..name_at + span.name_len as usize,
                value_at..value_at + span.value_len as usize,
            )
        })
    }

    /// Takes the head, its first `len` bytes, off `buf`, and returns its fields and bytes. The
    /// values share the head's bytes rather than each taking a copy.
    pub fn take(&self, buf: &mut BytesMut, len: usize) -> io::Result<(HeaderMap, Bytes)> {
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(self.spans.len() + ADDED_FIELDS);
        for (_, name, value) in self.ranges() {
            headers.append(
                HeaderName::from_bytes(&head[name]).map_err(invalid)?,
                HeaderValue::from_maybe_shared(head.slice(value)).map_err(invalid)?,
            );
        }
        Ok((headers, head))
    }

    /// Takes the head, its first `len` bytes, off `buf`, and returns its fields as lines.
    pub fn lines(&self, buf: &mut BytesMut, len: usize) -> FieldLines {
        let head = buf.split_to(len);
        // A field grows by at most a space after its colon and a CR before its LF.
        let mut out = BytesMut::with_capacity(len + 2 * self.spans.len());
        let mut length_at = 0;
        for lengths in [false, true] {
            length_at = out.len();
            // Neighbouring lines already in the regular form are copied as one piece.
            let mut run = 0..0;
            for (kind, name, value) in self.ranges() {
                if (kind == Name::ContentLength) != lengths {
                    continue;
                }
                let line = name.start..value.end + 2;
                let regular = head.get(name.end..value.start) == Some(b": ")
                    && head.get(value.end..line.end) == Some(b"\r\n");
                if regular && run.end == line.start {
                    run.end = line.end;
                    continue;
                }
                out.put_slice(&head[run]);
                run = if regular {
                    line
                } else {
                    put_line(&mut out, &head[name], &head[value]);
                    0..0
                };
            }
            out.put_slice(&head[run]);
        }
        FieldLines {
            bytes: out.freeze(),
            length_at,
            date: self.spans.iter().any(|span| span.name == Name::Date),
        }
    }
}

/// A backend answer's fields as `name: value` lines, ready to go to an HTTP/1.1 client as they
/// came: writing them out costs a fraction of building a header map and writing that. A map is
/// built only where an answer's fields are read or changed (HTTP/2 clients, gzip, cookies).
pub struct FieldLines {
    bytes: Bytes,
    /// Where the `Content-Length` lines start: they come last, for an answer that is sent with
    /// a length of its own.
    length_at: usize,
    /// Whether a `Date` field came.
    pub date: bool,
}

impl FieldLines {
    /// The lines, with or without the `Content-Length` ones.
    pub fn get(&self, with_length: bool) -> &[u8] {
        match with_length {
            true => &self.bytes,
            false => &self.bytes[..self.length_at],
        }
    }

    /// The value of the first `name` field.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .filter_map(Result::ok)
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    pub fn has_length(&self) -> bool {
        self.length_at < self.bytes.len()
    }

    /// The fields in a header map; the values share the lines' bytes.
    pub fn into_map(self) -> io::Result<HeaderMap> {
        let mut headers = HeaderMap::with_capacity(ADDED_FIELDS);
        for field in self.fields() {
            let (name, value) = field?;
            headers.append(
                HeaderName::from_bytes(name).map_err(invalid)?,
                HeaderValue::from_maybe_shared(self.bytes.slice_ref(value)).map_err(invalid)?,
            );
        }
        Ok(headers)
    }

    /// Each line's name and value.
    fn fields(&self) -> impl Iterator<Item = io::Result<(&[u8], &[u8])>> {
        self.bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line
                    .iter()
                    .position(|b| *b == b':')
                    .ok_or_else(|| invalid("a field line without a colon"))?;
                Ok((&line[..colon], line[colon + 1..].trim_ascii_start()))
            })
    }
}

fn put_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// What a head's `Connection` fields say (RFC 9110 §7.6.1), read from the parsed bytes.
#[derive(Default)]
pub struct Connection {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// A token other than `close` and `keep-alive`: it names a field that is hop-by-hop too.
    names_fields: bool,
}

impl Connection {
    /// Reads one `Connection` field's value.
    fn read(&mut self, value: &[u8]) {
        for t in list(value) {
            let (close, keep_alive) = (
                t.eq_ignore_ascii_case(b"close"),
                t.eq_ignore_ascii_case(b"keep-alive"),
            );
            self.close |= close;
            self.keep_alive |= keep_alive;
            self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            self.names_fields |= !close && !keep_alive;
        }
    }
}

/// The fields a message body's length comes from (RFC 9112 §6.3), read from the parsed bytes.
#[derive(Default)]
pub struct BodyFields<'a> {
    /// The last transfer coding named; `Some` whenever `Transfer-Encoding` came.
    pub coding: Option<&'a [u8]>,
    /// The first `Content-Length` value.
    pub length: Option<&'a [u8]>,
    /// How many `Content-Length` fields came.
    pub lengths: usize,
}

/// The items of a comma-separated field value, trimmed.
pub fn list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Appends each `name: value` field and its CRLF.
pub fn put_fields<'a>(
    out: &mut BytesMut,
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in fields {
        put_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Appends `name: value` and its CRLF. Written on every response: `itoa` takes a tenth of the
/// instructions `fmt` does.
pub fn put_field(out: &mut BytesMut, name: &str, value: u64) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
    out.put_slice(b"\r\n");
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

/// Reads more from `io` into `buf`; `Ok(0)` at the peer's end of stream. A read that fills
/// less than it asked for tells the runtime the socket is drained (a pooled backend connection
/// then looks idle to `quiet`).
pub fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(READ_SIZE);
    std::pin::pin!(io.read_buf(buf)).poll(cx)
}

/// The next frame of a body framed by `framing`: from `buf`, else once more is read from `io`.
/// `None` at the body's end; the peer closing first is an error unless the body is delimited
/// by the close.
pub fn poll_frame<R: AsyncRead + Unpin>(
    framing: &mut Framing,
    buf: &mut BytesMut,
    io: &mut R,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        if let Some(data) = framing.next_data(buf)? {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if framing.done() {
            return Poll::Ready(None);
        }
        if ready!(fill(io, buf, cx))? == 0 {
            framing.at_eof()?;
            return Poll::Ready(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hop-by-hop names (RFC 9110 §7.6.1) are told apart in any case, and no others.
    #[test]
    fn hop_by_hop_names_are_the_listed_ones() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(Name::of(name.as_bytes()).hop_by_hop(), "{name}");
            let upper = name.to_ascii_uppercase();
            assert!(Name::of(upper.as_bytes()).hop_by_hop(), "{upper}");
        }
        for name in [
            "date",
            "content-length",
            "connectio",
            "x-connection",
            "tee",
            "",
        ] {
            assert!(!Name::of(name.as_bytes()).hop_by_hop(), "{name}");
        }
        assert_eq!(Name::of(b"Content-Length"), Name::ContentLength);
        assert_eq!(Name::of(b"DATE"), Name::Date);
    }
}
