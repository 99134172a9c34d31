//! HTTP/1.x client connections (RFC 9112), read and written on the connection's own task:
//! keep-alive and pipelining, request bodies by length or chunked, `Expect: 100-continue`,
//! protocol switches handed to a tunnel (B9.18), `IdleTimeout` for the next request's head
//! (B9.7), the request limit (B9.9), and `400`/`431` for heads it cannot take. Doing only what
//! the proxy needs costs less per request than a general server.
use std::{
    cell::RefCell,
    future::{poll_fn, Future},
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body as _, Frame, SizeHint},
    header::{self, HeaderValue},
    http::request,
    Method, Request, Response, StatusCode, Uri, Version,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf, WriteHalf},
    sync::{oneshot, watch},
    time::Instant,
};

use super::{
    codec::{
        self, BodyFields, Chunk, FieldLines, Fields, Framing, Summary, MAX_FIELDS, MAX_HEAD,
        READ_SIZE,
    },
    forward::{Answer, Body, BodyError, Tunnel, Upgrade},
    MAX_REQUESTS_PER_CONNECTION,
};

/// Response bytes gathered before a write; a larger piece of body data goes out as it is.
const GATHER: usize = 16 * 1024;
/// What an answer's head is given up front in the write buffer.
const HEAD_ROOM: usize = 1024;
/// An unread request body (a `503` for an upload, say) is read and dropped up to this much to
/// keep the connection; beyond it the connection is closed.
const DRAIN_LIMIT: u64 = 1 << 20;

/// The connection's read side and what was read past the last message.
struct Reader<S> {
    io: ReadHalf<S>,
    buf: BytesMut,
}

impl<S: AsyncRead> Reader<S> {
    /// The next request head; `None` when the client closed between requests.
    async fn head(&mut self) -> Result<Option<Head>, Refused> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf)? {
                    return Ok(Some(head));
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(Refused::Status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
                }
            }
            let read = if self.buf.capacity() == 0 {
                poll_fn(|cx| read_scratch(&mut self.io, &mut self.buf, cx)).await
            } else {
                poll_fn(|cx| codec::fill(&mut self.io, &mut self.buf, cx)).await
            };
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(Refused::Gone),
                Ok(_) => {}
                Err(e) => {
                    log::debug!("reading a request head: {e}");
                    return Err(Refused::Gone);
                }
            }
        }
    }
}

/// Reads into the worker's scratch space and keeps only what came, so that a connection
/// waiting for its next request holds no read buffer: 10,000 idle keep-alive connections
/// would otherwise hold 10,000 buffers sized for a read.
fn read_scratch<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    thread_local! {
        static SCRATCH: RefCell<[u8; READ_SIZE]> = const { RefCell::new([0; READ_SIZE]) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let mut read = ReadBuf::new(scratch);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
}

/// Why no request came.
enum Refused {
    /// The client sent something this answers with an error status, then closes.
    Status(StatusCode),
    /// The connection failed or closed in the middle of a head.
    Gone,
}

/// A request body, read from the client connection as the backend exchange takes it. Finished
/// or dropped, it gives the connection's read side back for the next request.
pub struct ClientBody<S> {
    /// `None` for a request without a body, or once given back.
    reading: Option<(Reader<S>, Framing)>,
    back: Option<oneshot::Sender<(Reader<S>, Framing)>>,
}

impl<S> ClientBody<S> {
    fn give_back(&mut self) {
        if let (Some(reading), Some(back)) = (self.reading.take(), self.back.take()) {
            let _ = back.send(reading);
        }
    }
}

impl<S: AsyncRead> hyper::body::Body for ClientBody<S> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some((reader, framing)) = &mut self.reading else {
            return Poll::Ready(None);
        };
        let polled = ready!(codec::poll_frame(
            framing,
            &mut reader.buf,
            &mut reader.io,
            cx
        ));
        if framing.done() {
            self.give_back();
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(|(_, f)| f.done())
    }

    fn size_hint(&self) -> SizeHint {
        self.reading
            .as_ref()
            .map_or(SizeHint::with_exact(0), |(_, f)| f.size_hint())
    }
}

impl<S> Drop for ClientBody<S> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Serves HTTP/1.x requests on `io` with `handle` until the client closes, stays idle for
/// `idle`, reaches the request limit, or `stop` changes (in-flight requests finish first).
/// `close_notify`: end the stream with a shutdown (TLS needs it for session reuse, B10.21;
/// TCP's close sends its FIN anyway).
pub async fn serve<S, H, F>(
    io: S,
    idle: Duration,
    close_notify: bool,
    mut stop: watch::Receiver<bool>,
    mut handle: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: FnMut(Box<Request<ClientBody<S>>>) -> F,
    F: Future<Output = Answer>,
{
    let (read, mut write) = tokio::io::split(io);
    let mut r = Reader {
        io: read,
        buf: BytesMut::new(),
    };
    let mut out = BytesMut::new();
    let mut served = 0;
    // One wait for the stop per connection rather than one per request.
    let stopped = stop.clone();
    let mut stopping = std::pin::pin!(stop.changed());
    // B9.7: the next head within IdleTimeout of the last answer. One timer per connection,
    // moved only when it fires early, rather than one set and cancelled per request.
    let mut idle_since = Instant::from_std(super::now());
    let mut idle_timer = std::pin::pin!(tokio::time::sleep(idle));
    let end = 'requests: loop {
        // Stopping closes a connection that waits for its next request.
        let waiting = r.buf.is_empty();
        if waiting {
            // Waiting, the connection holds no buffers (see `read_scratch`).
            r.buf = BytesMut::new();
            out = BytesMut::new();
        }
        let head = loop {
            // Biased, the head first: a request that came is served without polling the stop
            // and the idle timer, which register the task's waker each time (the stop under a
            // lock).
            tokio::select! {
                biased;
                h = r.head() => break h,
                _ = &mut stopping, if waiting => break 'requests Ok(End::Close),
                () = &mut idle_timer => {
                    let due = idle_since + idle;
                    if Instant::from_std(super::now()) >= due {
                        break 'requests Ok(End::Close);
                    }
                    idle_timer.as_mut().reset(due);
                }
            }
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) | Err(Refused::Gone) => break Ok(End::Close),
            Err(Refused::Status(status)) => break Ok(End::Refuse(status)),
        };
        served += 1;
        let keep_alive = head.keep_alive && served < MAX_REQUESTS_PER_CONNECTION;
        let ready = match head.ready(r, keep_alive) {
            Ok(ready) => ready,
            Err(status) => break Ok(End::Refuse(status)),
        };
        // Boxed: a connection's future is as large as the largest state it may be in, and a
        // request's work is several times what a connection needs while it waits for the next
        // request, as 10,000 idle keep-alive connections do.
        let step = Box::pin(request(
            ready,
            &mut write,
            &mut out,
            &mut handle,
            &stopped,
            idle,
        ));
        match step.await {
            Ok(Step::Next(next)) => r = next,
            Ok(Step::End(end)) => break Ok(end),
            Err(e) => break Err(e),
        }
        idle_since = Instant::from_std(super::now());
    };
    let result = match end {
        Ok(End::Close) if close_notify => write.shutdown().await,
        Ok(End::Close) => Ok(()),
        Ok(End::Refuse(status)) => refuse(&mut write, status).await,
        // Boxed for the same reason as a request.
        Ok(End::Tunnel(upgrade)) => Box::pin(switch(write, *upgrade)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        log::debug!("client connection: {e}");
    }
}

/// How a connection's request loop ended.
enum End<S> {
    Close,
    /// With this error status.
    Refuse(StatusCode),
    /// With a `101`: the connection becomes a tunnel.
    Tunnel(Box<(Response<Body>, Tunnel, Reader<S>)>),
}

/// What a request leaves its connection with.
enum Step<S> {
    /// The next request may come, on this read side.
    Next(Reader<S>),
    End(End<S>),
}

/// A request ready for its handler, and what its connection needs to know of it.
struct Ready<S> {
    req: Box<Request<ClientBody<S>>>,
    /// The read side, unless the request body has it: then it comes back on `back`.
    reader: Option<Reader<S>>,
    back: Option<oneshot::Receiver<(Reader<S>, Framing)>>,
    /// An HTTP/1.1 client waits for a `100 Continue` before it sends the body.
    expects_continue: bool,
    keep_alive: bool,
}

impl Head {
    /// The request with its body, read from `r`, or the status that refuses it.
    fn ready<S>(self, r: Reader<S>, keep_alive: bool) -> Result<Ready<S>, StatusCode> {
        let Head {
            mut parts, framing, ..
        } = self;
        let framing = framing?;
        let mut expects_continue = false;
        let (body, reader, back) = if framing.done() {
            let body = ClientBody {
                reading: None,
                back: None,
            };
            (body, Some(r), None)
        } else {
            // Answered here, at once (RFC 9110 §10.1.1), rather than by the backend.
            expects_continue =
                parts.headers.remove(header::EXPECT).is_some() && parts.version == Version::HTTP_11;
            let (tx, rx) = oneshot::channel();
            let body = ClientBody {
                reading: Some((r, framing)),
                back: Some(tx),
            };
            (body, None, Some(rx))
        };
        Ok(Ready {
            req: Box::new(Request::from_parts(parts, body)),
            reader,
            back,
            expects_continue,
            keep_alive,
        })
    }
}

/// Serves one request: hands it to `handle`, writes the answer, and takes the read side back
/// once the request body is done with.
async fn request<S, H, F>(
    ready: Ready<S>,
    write: &mut WriteHalf<S>,
    out: &mut BytesMut,
    handle: &mut H,
    stopped: &watch::Receiver<bool>,
    idle: Duration,
) -> io::Result<Step<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Box<Request<ClientBody<S>>>) -> F,
    F: Future<Output = Answer>,
{
    let Ready {
        req,
        mut reader,
        back,
        expects_continue,
        keep_alive,
    } = ready;
    let head_request = req.method() == Method::HEAD;
    let version = req.version();
    if expects_continue {
        write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let Answer {
        resp,
        lines,
        tunnel,
    } = handle(req).await;
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(tunnel)) = (resp.status(), tunnel) {
        // A request with a body keeps the read side until the body is read: it does not
        // switch.
        return Ok(Step::End(match reader {
            Some(r) => End::Tunnel(Box::new((resp, tunnel, r))),
            None => End::Close,
        }));
    }
    let mut close = !keep_alive || *stopped.borrow();
    let complete = respond(write, out, resp, lines, head_request, version, close).await?;
    close |= !complete;
    if let Some(back) = back {
        // The body comes back once the exchange is done with it; what is left unread is
        // skipped so that the next request can be found.
        reader = match tokio::time::timeout(idle, back).await {
            Ok(Ok((mut r, mut framing))) => drain(&mut r, &mut framing, idle).await.then_some(r),
            _ => None,
        };
    }
    Ok(match reader {
        Some(r) if !close => Step::Next(r),
        _ => Step::End(End::Close),
    })
}

/// Sends the `101` and relays bytes both ways from then on (B9.18).
async fn switch<S: AsyncRead + AsyncWrite + Unpin>(
    mut write: WriteHalf<S>,
    (resp, tunnel, r): (Response<Body>, Tunnel, Reader<S>),
) -> io::Result<()> {
    let mut out = BytesMut::new();
    let head_request = false;
    respond(
        &mut write,
        &mut out,
        resp,
        None,
        head_request,
        Version::HTTP_11,
        false,
    )
    .await?;
    tunnel.relay(r.io.unsplit(write), r.buf.freeze()).await;
    Ok(())
}

async fn refuse<W: AsyncWrite + Unpin>(write: &mut W, status: StatusCode) -> io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n").into_bytes();
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(date().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    write.write_all(&head).await?;
    write.shutdown().await
}

/// A request head, and what its connection fields say.
struct Head {
    /// Without the hop-by-hop fields; an upgrade asked for is in its extensions.
    parts: request::Parts,
    /// How its body is delimited, or the status that refuses it.
    framing: Result<Framing, StatusCode>,
    /// HTTP/1.1 without `Connection: close`, HTTP/1.0 with `Connection: keep-alive`.
    keep_alive: bool,
}

/// Takes a complete request head off the front of `buf`, or `None` until more bytes come. The
/// connection fields are read from the parsed bytes and the hop-by-hop ones left out of the map
/// (RFC 9110 §7.6.1), as for a backend's answer.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Refused> {
    fn bad<E>(_: E) -> Refused {
        Refused::Status(StatusCode::BAD_REQUEST)
    }
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused::Status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        }
        Err(_) => return Err(Refused::Status(StatusCode::BAD_REQUEST)),
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes()).map_err(bad)?;
    parts.version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut fields = Fields::default();
    let Summary {
        connection,
        body,
        upgrade,
    } = fields.read(parsed.headers, buf, false);
    let framing = request_framing(&body, parts.version);
    let keep_alive = match parts.version {
        Version::HTTP_11 => !connection.close,
        _ => connection.keep_alive,
    };
    let upgrade = upgrade
        .filter(|_| parts.version == Version::HTTP_11 && connection.upgrade)
        .map(|v| HeaderValue::from_bytes(v).map_err(bad))
        .transpose()?;
    let target = parsed.path.unwrap_or("");
    let at = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target = at..at + target.len();
    let head;
    (parts.headers, head) = fields.take(buf, len).map_err(bad)?;
    // Shares the head's bytes, as the field values do.
    parts.uri = Uri::from_maybe_shared(head.slice(target)).map_err(bad)?;
    if let Some(protocol) = upgrade {
        parts.extensions.insert(Upgrade(protocol));
    }
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
    }))
}

/// How the request's body is delimited (RFC 9112 §6.3). Both `Transfer-Encoding` and
/// `Content-Length`, or a length that is not one number, is refused as nginx does: either
/// could be a request smuggled past another hop.
fn request_framing(body: &BodyFields<'_>, version: Version) -> Result<Framing, StatusCode> {
    if let Some(coding) = body.coding {
        if !coding.eq_ignore_ascii_case(b"chunked")
            || version == Version::HTTP_10
            || body.lengths > 0
        {
            return Err(StatusCode::BAD_REQUEST);
        }
        return Ok(Framing::Chunked(Chunk::Size));
    }
    match (body.lengths, body.length) {
        (0, _) => Ok(Framing::Length(0)),
        (1, Some(v)) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Framing::Length)
            .ok_or(StatusCode::BAD_REQUEST),
        _ => Err(StatusCode::BAD_REQUEST),
    }
}

/// How a response body goes out.
enum Sending {
    /// None: `HEAD`, `1xx`, `204`, `304`; the fields stay as the handler set them.
    Nothing,
    Length(u64),
    Chunked,
    /// Until the connection closes: an HTTP/1.0 client and a body of unknown length.
    Close,
}

/// Writes `resp`, with the backend's field `lines` when they came as lines. `Ok(false)`: the
/// body did not end as its framing said, so the connection cannot carry another response.
async fn respond<W: AsyncWrite + Unpin>(
    write: &mut W,
    out: &mut BytesMut,
    resp: Response<Body>,
    lines: Option<FieldLines>,
    head_request: bool,
    version: Version,
    mut close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    // Room for a usual head, rather than growing to it step by step.
    out.reserve(HEAD_ROOM);
    let sending = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Sending::Nothing
    } else {
        match body.size_hint().exact() {
            Some(n) => Sending::Length(n),
            None if version == Version::HTTP_11 => Sending::Chunked,
            None => {
                close = true;
                Sending::Close
            }
        }
    };
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let own_length = !matches!(sending, Sending::Nothing);
    if let Some(lines) = &lines {
        out.put_slice(lines.get(!own_length));
    }
    codec::put_fields(
        out,
        parts.headers.iter().filter(|(name, _)| {
            *name != header::TRANSFER_ENCODING && !(own_length && *name == header::CONTENT_LENGTH)
        }),
    );
    // A HEAD answer without the field tells the length its GET would have, when known.
    let length_came = lines.as_ref().is_some_and(FieldLines::has_length)
        || parts.headers.contains_key(header::CONTENT_LENGTH);
    let head_length = (head_request && !length_came)
        .then(|| body.size_hint().exact())
        .flatten()
        .filter(|n| *n > 0);
    match (&sending, head_length.as_ref()) {
        (Sending::Length(n), _) | (Sending::Nothing, Some(n)) => {
            codec::put_field(out, "content-length", *n);
        }
        (Sending::Chunked, _) => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !lines.as_ref().is_some_and(|l| l.date) && !parts.headers.contains_key(header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(date().as_bytes());
        out.put_slice(b"\r\n");
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The backend's Connection and Upgrade fields are the answer.
    } else if close {
        out.put_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
    let mut sent = 0u64;
    if !matches!(sending, Sending::Nothing) {
        loop {
            // Frames that are ready go out with the head in one write; the gathered bytes go
            // out before waiting for more.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write.write_all_buf(out).await?;
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue, // Trailers are not forwarded.
                },
            };
            sent += data.len() as u64;
            let chunked = matches!(sending, Sending::Chunked);
            if data.len() > GATHER {
                if chunked {
                    write
                        .write_all_buf(&mut out.split().chain(codec::chunk(data)))
                        .await?;
                } else {
                    write.write_all_buf(&mut out.split().chain(data)).await?;
                }
                continue;
            }
            if chunked {
                out.put(codec::chunk(data));
            } else {
                out.put_slice(&data);
            }
            if out.len() >= GATHER {
                write.write_all_buf(out).await?;
            }
        }
    }
    if matches!(sending, Sending::Chunked) {
        out.put_slice(b"0\r\n\r\n");
    }
    write.write_all_buf(out).await?;
    write.flush().await?;
    Ok(match sending {
        Sending::Length(n) => sent == n,
        _ => true,
    })
}

/// Reads and drops what is left of a request body, up to [`DRAIN_LIMIT`] and within `idle`;
/// `false` when the connection cannot be used for another request.
async fn drain<S: AsyncRead>(r: &mut Reader<S>, framing: &mut Framing, idle: Duration) -> bool {
    matches!(
        tokio::time::timeout(idle, skip(r, framing)).await,
        Ok(Ok(true))
    )
}

async fn skip<S: AsyncRead>(r: &mut Reader<S>, framing: &mut Framing) -> io::Result<bool> {
    let mut skipped = 0u64;
    loop {
        while let Some(data) = framing.next_data(&mut r.buf)? {
            skipped += data.len() as u64;
        }
        if framing.done() {
            return Ok(true);
        }
        if skipped > DRAIN_LIMIT || poll_fn(|cx| codec::fill(&mut r.io, &mut r.buf, cx)).await? == 0
        {
            return Ok(false);
        }
    }
}

/// The `Date` field for answers that carry none, formatted once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs {
            *at = secs;
            *value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::{BodyExt as _, Full};
    use tokio::{
        io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// A body of unknown length.
    struct Unsized(Option<Bytes>);

    impl hyper::body::Body for Unsized {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
    }

    /// A server on loopback whose handler answers `<method> <target> <body>`, reading the
    /// body, except for `/ignore`, which answers 503 without reading it, and `/unsized`, whose
    /// answer has no length. The sender stops the server's connections.
    async fn server(idle: Duration) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(
                    stream,
                    idle,
                    false,
                    stopped.clone(),
                    |req| async move {
                        let (parts, body) = req.into_parts();
                        let target = parts.uri.to_string();
                        let resp = match target.as_str() {
                            "/ignore" => {
                                drop(body);
                                let mut r = Response::new(
                                    Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
                                );
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                r
                            }
                            "/unsized" => {
                                Response::new(Unsized(Some(Bytes::from("streamed"))).boxed())
                            }
                            "/slow" => {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                Response::new(
                                    Full::new(Bytes::from("slow"))
                                        .map_err(|n| match n {})
                                        .boxed(),
                                )
                            }
                            _ => {
                                let data = body.collect().await.unwrap().to_bytes();
                                let text = format!(
                                    "{} {target} {}",
                                    parts.method,
                                    String::from_utf8_lossy(&data)
                                );
                                Response::new(
                                    Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed(),
                                )
                            }
                        };
                        Answer::own(resp)
                    },
                ));
            }
        });
        (addr, stop)
    }

    /// One response: its head (lower-cased) and body, read by its framing.
    async fn read(c: &mut BufReader<TcpStream>) -> (String, String) {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(
                c.read_line(&mut line).await.unwrap() > 0,
                "closed in {head:?}"
            );
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let mut body = Vec::new();
        if head.starts_with("http/1.1 1") || head.starts_with("http/1.1 204") {
        } else if let Some(len) = field("content-length:") {
            body.resize(len.parse().unwrap(), 0);
            c.read_exact(&mut body).await.unwrap();
        } else if field("transfer-encoding:").as_deref() == Some("chunked") {
            loop {
                let mut size = String::new();
                c.read_line(&mut size).await.unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                c.read_exact(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            c.read_to_end(&mut body).await.unwrap();
        }
        (head, String::from_utf8(body).unwrap())
    }

    async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(addr).await.unwrap())
    }

    async fn closed(c: &mut BufReader<TcpStream>) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    /// RFC 9112 §9.3.2 pipelining, §6.2/§7.1 length and chunked bodies, RFC 9110 §10.1.1
    /// `Expect: 100-continue`; B9.15: answers carry a `Date` the LB may set.
    #[tokio::test]
    async fn pipelined_requests_with_bodies_are_answered_in_order() {
        let (addr, _stop) = server(Duration::from_secs(5)).await;
        let mut c = connect(addr).await;
        c.get_mut()
            .write_all(
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3;ext=1\r\nwor\r\n2\r\nld\r\n0\r\nTrailer: t\r\n\r\n\
                  GET /c?q HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await
            .unwrap();
        for want in ["POST /a hello", "POST /b world", "GET /c?q "] {
            let (head, body) = read(&mut c).await;
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            assert!(head.contains("\r\ndate: "), "{head}");
            assert_eq!(body, want);
        }
        // Expect: 100-continue is answered before the body is sent.
        c.get_mut()
            .write_all(
                b"PUT /d HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            )
            .await
            .unwrap();
        let (head, _) = read(&mut c).await;
        assert!(head.starts_with("http/1.1 100 continue"), "{head}");
        c.get_mut().write_all(b"ok").await.unwrap();
        assert_eq!(read(&mut c).await.1, "PUT /d ok");
    }

    /// B4.17's 503 for an upload leaves the keep-alive connection usable (RFC 9112 §9.3).
    #[tokio::test]
    async fn an_unread_body_is_skipped_and_the_connection_kept() {
        let (addr, _stop) = server(Duration::from_secs(5)).await;
        let mut c = connect(addr).await;
        c.get_mut()
            .write_all(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read(&mut c).await.0.starts_with("http/1.1 503 "));
        assert_eq!(read(&mut c).await.1, "GET /next ");
    }

    /// B9.15: the LB may answer chunked; RFC 9112 §6.1/§9.3: HTTP/1.0 clients get no chunked
    /// answer and keep-alive only when they ask for it; a HEAD answer carries its length.
    #[tokio::test]
    async fn framing_follows_the_client_version() {
        let (addr, _stop) = server(Duration::from_secs(5)).await;
        // HTTP/1.1: a body of unknown length is chunked; HEAD gets no body.
        let mut c = connect(addr).await;
        c.get_mut()
            .write_all(b"GET /unsized HTTP/1.1\r\nHost: x\r\n\r\nHEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read(&mut c).await;
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, "streamed");
        let mut head = String::new();
        loop {
            let mut line = String::new();
            c.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.contains("content-length: 8"), "{head}");
        assert_eq!(read(&mut c).await.1, "GET /after ");
        // HTTP/1.0: kept alive only when asked; an unknown length is delimited by the close.
        let mut c = connect(addr).await;
        c.get_mut()
            .write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read(&mut c).await;
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert_eq!(body, "GET /a ");
        c.get_mut()
            .write_all(b"GET /unsized HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read(&mut c).await;
        assert!(head.contains("connection: close"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!(body, "streamed");
        let mut c = connect(addr).await;
        c.get_mut()
            .write_all(b"GET /b HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read(&mut c).await;
        assert!(head.contains("connection: close"), "{head}");
        assert!(closed(&mut c).await);
    }

    /// RFC 9112 §6.3: a request whose body length is ambiguous is refused with 400 and the
    /// connection closed; RFC 6585 §5: 431 for too many or too large fields.
    #[tokio::test]
    async fn bad_heads_are_refused_and_closed() {
        let (addr, _stop) = server(Duration::from_secs(5)).await;
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let cases = [
            (
                "both lengths",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                    .to_string(),
                400,
            ),
            (
                "two lengths",
                "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n".to_string(),
                400,
            ),
            (
                "signed length",
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n".to_string(),
                400,
            ),
            (
                "not chunked last",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_string(),
                400,
            ),
            ("no request line", "hello there\r\n\r\n".to_string(), 400),
            (
                "too many fields",
                format!("GET / HTTP/1.1\r\n{many}\r\n"),
                431,
            ),
            ("head too large", long, 431),
        ];
        for (what, raw, status) in cases {
            let mut c = connect(addr).await;
            c.get_mut().write_all(raw.as_bytes()).await.unwrap();
            let (head, _) = read(&mut c).await;
            assert!(
                head.starts_with(&format!("http/1.1 {status} ")),
                "{what}: {head}"
            );
            assert!(closed(&mut c).await, "{what}");
        }
    }

    /// B9.7: an idle connection closes after the idle time; a stop closes a waiting connection
    /// at once and lets an answer in progress finish with `Connection: close`.
    #[tokio::test]
    async fn idle_and_stopped_connections_close() {
        let (addr, stop) = server(Duration::from_secs(1)).await;
        let mut c = connect(addr).await;
        c.get_mut()
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        read(&mut c).await;
        let idle = std::time::Instant::now();
        assert!(closed(&mut c).await);
        let waited = idle.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "{waited:?}"
        );

        let mut waiting = connect(addr).await;
        let mut busy = connect(addr).await;
        busy.get_mut()
            .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        assert!(closed(&mut waiting).await);
        let (head, body) = read(&mut busy).await;
        assert_eq!(body, "slow");
        assert!(head.contains("connection: close"), "{head}");
        assert!(closed(&mut busy).await);
    }

    /// RFC 9110 §7.6.1: a request head loses its hop-by-hop fields and those its `Connection`
    /// names, keeps the rest, and says how it is framed (B9.12), whether the connection stays
    /// open, and which protocol it asks to switch to (B9.18).
    #[test]
    fn request_heads_lose_hop_by_hop_fields() {
        let parse = |head: &str| {
            let mut buf = BytesMut::from(head);
            match parse_head(&mut buf) {
                Ok(Some(head)) => head,
                _ => panic!("{head:?} not parsed"),
            }
        };
        let head = parse(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, X-Secret\r\nX-Secret: 1\r\n\
             Upgrade: websocket\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Connection: x\r\nX-Keep: 2\r\n\r\n",
        );
        let names: Vec<&str> = head.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-keep"]);
        assert_eq!(
            head.parts.extensions.get::<Upgrade>().map(|u| u.0.clone()),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(head.keep_alive);
        assert!(matches!(head.framing, Ok(Framing::Length(0))));

        let head = parse(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        );
        assert!(head.parts.headers.is_empty());
        assert!(head.parts.extensions.get::<Upgrade>().is_none());
        assert!(!head.keep_alive);
        assert!(matches!(head.framing, Ok(Framing::Chunked(_))));

        let head = parse("POST / HTTP/1.0\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n");
        assert!(head.keep_alive);
        assert!(matches!(head.framing, Ok(Framing::Length(12))));
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive);
        // An upgrade needs both fields, over HTTP/1.1.
        let head = parse("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert!(head.parts.extensions.get::<Upgrade>().is_none());

        for smuggled in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        ] {
            assert!(
                matches!(parse(smuggled).framing, Err(StatusCode::BAD_REQUEST)),
                "{smuggled:?}"
            );
        }
    }
}
