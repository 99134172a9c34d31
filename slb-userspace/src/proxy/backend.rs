//! Connections to backends, HTTP/1.x written and read on the request's own task (B9.12). A
//! backend connection that finished its exchange waits in a small idle pool for the next request
//! to that backend, from any client, so most requests skip the TCP handshake, as nginx's
//! `keepalive` and HAProxy's connection reuse do.
use std::{
    collections::HashMap,
    future::{poll_fn, Future as _},
    io::{self, ErrorKind},
    mem::MaybeUninit,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{ready, Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body, Frame, SizeHint},
    header, Method, Request, Response, StatusCode, Version,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::TcpStream,
    time::{sleep_until, Sleep},
};

use super::{
    codec::{self, invalid, Chunk, FieldLines, Fields, Framing, Summary, MAX_FIELDS, MAX_HEAD},
    forward::BodyError,
};

/// The TCP handshake to a backend gives up after this and tries the next backend (B9.10).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per backend.
const MAX_IDLE: usize = 64;
/// Below the shortest keep-alive timeout common backends use (Apache's 5 s; nginx's is 75 s), so
/// the pool rarely hands out a connection the backend is just closing.
const IDLE_LIFETIME: Duration = Duration::from_secs(4);

/// A backend connection ready for one request.
pub enum Conn {
    /// Reused from the idle pool; the backend may have closed it just now.
    Pooled(Link),
    Fresh(TcpStream),
}

/// A backend connection with its read buffer and its `RequestTimeout` timer, which go into the
/// pool with it. The timer stays registered between requests: moving a registered timer to a
/// later deadline costs one compare-and-swap, where a timer per request is added to and taken
/// out of the runtime's wheel each time. While the connection idles, its timer may wake the
/// last request's task once, for nothing.
pub struct Link {
    stream: TcpStream,
    buf: BytesMut,
    timer: Pin<Box<Sleep>>,
}

/// How an exchange failed.
pub enum Failure {
    /// The backend broke the exchange.
    Exchange,
    /// No response head within `RequestTimeout`.
    Timeout,
}

#[derive(Default)]
pub struct Backends {
    /// Looked up twice per request: foldhash costs a fraction of std's SipHash, and the keys are
    /// the configured backends, not chosen by clients.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
}

/// A pooled connection, and since when it waits.
struct Idle {
    link: Link,
    since: Instant,
}

impl Backends {
    /// An idle connection to `addr`, if one is still open.
    pub fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if super::now().duration_since(idle.since) < IDLE_LIFETIME && quiet(&idle.link.stream) {
                return Some(Conn::Pooled(idle.link));
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, link: Link) {
        let now = super::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE {
            list.retain(|i| now - i.since < IDLE_LIFETIME && quiet(&i.link.stream));
        }
        if list.len() < MAX_IDLE {
            list.push(Idle { link, since: now });
        }
    }

    /// Sends `req` and reads the response head within `timeout`: the response, whose header map
    /// is empty, and its fields as lines. The response body returns the connection to the pool
    /// once read to its end; a `101` answer's body becomes the tunnel to the backend
    /// ([`Upstream::into_tunnel`]). The request is boxed: it moves through several futures on
    /// its way here, a copy of its 300 bytes each time.
    pub async fn exchange<B>(
        self: Arc<Self>,
        addr: SocketAddr,
        conn: Conn,
        mut req: Box<Request<B>>,
        timeout: Duration,
    ) -> Result<(Response<Upstream>, FieldLines), Failure>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let deadline = tokio::time::Instant::from_std(super::now()) + timeout;
        // A pooled connection's buffer is reused: the head is written from it, and the answer
        // read into it.
        let (mut stream, mut buf, mut timer, mut pooled) = match conn {
            Conn::Pooled(mut link) => {
                link.timer.as_mut().reset(deadline);
                (link.stream, link.buf, link.timer, true)
            }
            Conn::Fresh(s) => (s, BytesMut::new(), Box::pin(sleep_until(deadline)), false),
        };
        let work = async move {
            let length = req.body().size_hint().exact();
            let head_request = req.method() == Method::HEAD;
            let has_body = !req.body().is_end_stream();
            loop {
                encode_head(&req, length, &mut buf);
                let body = has_body.then(|| req.body_mut());
                match send(&mut stream, body, length, head_request, &mut buf).await {
                    Ok(resp) => break Ok((stream, buf, resp, req.version())),
                    // A pooled connection the backend closed before answering anything: the
                    // request goes again on a new one, unless its body is spent already.
                    Err(e) if pooled && buf.is_empty() && !has_body && closed(&e) => {
                        stream = Box::pin(connect(addr))
                            .await
                            .map_err(|_| Failure::Exchange)?;
                        pooled = false;
                    }
                    Err(e) => {
                        log::debug!("backend {addr}: {e}");
                        break Err(Failure::Exchange);
                    }
                }
            }
        };
        let mut work = std::pin::pin!(work);
        let (stream, buf, head, version) = poll_fn(|cx| match work.as_mut().poll(cx) {
            Poll::Pending => timer.as_mut().poll(cx).map(|()| Err(Failure::Timeout)),
            done => done,
        })
        .await?;
        let Head {
            resp,
            lines,
            framing,
            keeps_open,
        } = head;
        // An HTTP/1.0 request asked the backend to close after its answer.
        let reusable = version == Version::HTTP_11 && keeps_open;
        let body = Upstream {
            link: Some(Link { stream, buf, timer }),
            framing,
            reusable,
            pool: self,
            addr,
        };
        Ok((resp.map(|()| body), lines))
    }
}

/// Whether an idle connection has nothing to read: a backend that closed it (or sent bytes
/// nobody asked for) made it readable. The runtime records readiness as epoll reports it, so
/// this costs no system call.
fn quiet(stream: &TcpStream) -> bool {
    stream
        .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}

/// The peer closed or reset the connection.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionAborted
    )
}

/// Connects within [`CONNECT_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The request line and header fields, into `out`; `length`: the body's, when known up front
/// (otherwise it is chunked).
fn encode_head<B>(req: &Request<B>, length: Option<u64>, out: &mut BytesMut) {
    out.reserve(256 + req.headers().len() * 32);
    out.put_slice(req.method().as_str().as_bytes());
    out.put_u8(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(match req.version() {
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    codec::put_fields(out, req.headers());
    match length {
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Some(_) if req.headers().contains_key(header::CONTENT_LENGTH) => {}
        Some(len) => {
            if len > 0 || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
                codec::put_field(out, "content-length", len);
            }
        }
    }
    out.put_slice(b"\r\n");
}

/// Writes the request and reads up to the end of the final response head (interim `1xx`
/// answers other than `101` are skipped). `buf` keeps what was read past the head.
async fn send<B>(
    stream: &mut TcpStream,
    body: Option<&mut B>,
    length: Option<u64>,
    head_request: bool,
    buf: &mut BytesMut,
) -> io::Result<Head>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    if let Err(e) = stream.write_all_buf(buf).await {
        // Nothing of an answer is in the buffer: the caller may retry.
        buf.clear();
        return Err(e);
    }
    let chunked = length.is_none();
    if let Some(body) = body {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| io::Error::other(e.into()))?;
            let Ok(data) = frame.into_data() else {
                continue; // Trailers are not forwarded.
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                stream.write_all_buf(&mut codec::chunk(data)).await?;
            } else {
                stream.write_all(&data).await?;
            }
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n").await?;
        }
    }
    loop {
        let head = loop {
            if !buf.is_empty() {
                if let Some(head) = parse_head(buf, head_request)? {
                    break head;
                }
            }
            if buf.len() >= MAX_HEAD {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            if poll_fn(|cx| codec::fill(stream, buf, cx)).await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        };
        let status = head.resp.status();
        if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(head);
        }
    }
}

/// A response head, and what its connection fields say.
struct Head {
    /// Status and version; its header map is empty.
    resp: Response<()>,
    /// Without the hop-by-hop fields, unless it switches protocols: those are the client's.
    lines: FieldLines,
    framing: Framing,
    /// HTTP/1.1 with a delimited body, no `Connection: close`, no protocol switch.
    keeps_open: bool,
}

/// Takes a complete response head off the front of `buf`, or `None` until more bytes come. The
/// connection fields are read from the parsed bytes and the hop-by-hop ones left out of the
/// lines (RFC 9110 §7.6.1).
fn parse_head(buf: &mut BytesMut, head_request: bool) -> io::Result<Option<Head>> {
    // Left uninitialised: most heads use a few of these.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)
        .map_err(invalid)?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(invalid)?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut fields = Fields::default();
    let Summary {
        connection, body, ..
    } = fields.read(parsed.headers, buf, switching);
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if let Some(coding) = body.coding {
        if coding.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else if let Some(length) = body.length {
        std::str::from_utf8(length)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Framing::Length)
            .ok_or_else(|| invalid("bad content-length"))?
    } else {
        Framing::Close
    };
    let keeps_open = version == Version::HTTP_11
        && !switching
        && !connection.close
        && !matches!(framing, Framing::Close);
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    Ok(Some(Head {
        resp,
        lines: fields.lines(buf, len),
        framing,
        keeps_open,
    }))
}

/// A backend response's body, read from its connection as the client takes it.
pub struct Upstream {
    /// `None` once the body ended and the connection went back to the pool or was closed.
    link: Option<Link>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Backends>,
    addr: SocketAddr,
}

impl Upstream {
    /// The connection after a `101`, and what the backend sent past the head.
    pub fn into_tunnel(mut self) -> Option<(TcpStream, Bytes)> {
        self.link.take().map(|l| (l.stream, l.buf.freeze()))
    }

    /// The body ended: the connection goes back to the pool if it can take another request.
    fn finish(&mut self) {
        if let Some(link) = self.link.take() {
            if self.reusable && link.buf.is_empty() {
                self.pool.put(self.addr, link);
            }
        }
    }
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        // The connection is gone only once the body ended (or became a tunnel).
        let Some(link) = &mut this.link else {
            return Poll::Ready(None);
        };
        let polled = ready!(codec::poll_frame(
            &mut this.framing,
            &mut link.buf,
            &mut link.stream,
            cx
        ));
        if this.framing.done() {
            this.finish();
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.framing.done()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{Empty, Full};
    use tokio::{
        io::{AsyncBufReadExt as _, AsyncReadExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A backend that answers each connection's requests, in order, with `answers`' entries
    /// (one entry per connection: its answers, then `None` to close). Each request it read is
    /// sent on the channel.
    async fn backend(
        answers: Vec<Vec<&'static str>>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for conn in answers {
                let (s, _) = listener.accept().await.unwrap();
                let mut s = tokio::io::BufReader::new(s);
                for answer in conn {
                    let mut req = String::new();
                    while !req.ends_with("\r\n\r\n") {
                        if s.read_line(&mut req).await.unwrap() == 0 {
                            return;
                        }
                    }
                    // A chunked request body, to its last chunk and final CRLF.
                    if req.contains("transfer-encoding: chunked") {
                        while !req.ends_with("0\r\n\r\n") {
                            s.read_line(&mut req).await.unwrap();
                        }
                    }
                    tx.send(req).unwrap();
                    s.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        (addr, rx)
    }

    async fn fetch<B>(
        pool: &Arc<Backends>,
        addr: SocketAddr,
        req: Request<B>,
    ) -> Result<(Response<()>, Vec<u8>), Failure>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let conn = match pool.take(addr) {
            Some(c) => c,
            None => Conn::Fresh(connect(addr).await.unwrap()),
        };
        fetch_on(pool, addr, conn, req, Duration::from_secs(5)).await
    }

    /// Exchanges `req` on `conn` and reads the answer to its end.
    async fn fetch_on<B>(
        pool: &Arc<Backends>,
        addr: SocketAddr,
        conn: Conn,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<(Response<()>, Vec<u8>), Failure>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let (resp, _) = pool
            .clone()
            .exchange(addr, conn, Box::new(req), timeout)
            .await?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|_| Failure::Exchange)?;
        Ok((Response::from_parts(parts, ()), bytes.to_bytes().to_vec()))
    }

    fn get(method: Method) -> Request<Empty<Bytes>> {
        Request::builder()
            .method(method)
            .uri("/x")
            .header(header::HOST, "b")
            .body(Empty::new())
            .unwrap()
    }

    /// B9.12: a chunked answer (with a chunk extension and a trailer) is decoded, an interim
    /// `100` is skipped, a HEAD answer has no body whatever its Content-Length says, `204`
    /// has none either; the connection goes back to the pool after each and serves them all.
    #[tokio::test]
    async fn one_connection_serves_chunked_interim_head_and_empty_answers() {
        let (addr, mut requests) = backend(vec![vec![
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ]])
        .await;
        let pool = Arc::new(Backends::default());
        let (r, body) = fetch(&pool, addr, get(Method::GET)).await.ok().unwrap();
        assert_eq!(
            (r.status(), body.as_slice()),
            (StatusCode::OK, &b"hello world"[..])
        );
        let head = requests.recv().await.unwrap();
        assert!(head.starts_with("GET /x HTTP/1.1\r\nhost: b\r\n"), "{head}");
        let (r, body) = fetch(&pool, addr, get(Method::GET)).await.ok().unwrap();
        assert_eq!(
            (r.status(), body.as_slice()),
            (StatusCode::CREATED, &b"ok"[..])
        );
        let (r, body) = fetch(&pool, addr, get(Method::HEAD)).await.ok().unwrap();
        assert_eq!((r.status(), body.len()), (StatusCode::OK, 0));
        let (r, body) = fetch(&pool, addr, get(Method::GET)).await.ok().unwrap();
        assert_eq!((r.status(), body.len()), (StatusCode::NO_CONTENT, 0));
        // All four came over the one connection the backend accepts: a second one would get
        // no answer, and the exchange would time out.
    }

    /// B9.12: a body that comes after its head, read as the client takes it: its connection
    /// still goes back to the pool.
    #[tokio::test]
    async fn a_body_read_later_leaves_its_connection_pooled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(b"later").await.unwrap();
            s
        });
        let pool = Arc::new(Backends::default());
        let (_, body) = fetch(&pool, addr, get(Method::GET)).await.ok().unwrap();
        assert_eq!(body, b"later");
        let _open = server.await.unwrap();
        assert!(matches!(pool.take(addr), Some(Conn::Pooled(..))));
    }

    /// B9.12, B9.13: an answer without length runs to the backend's close and its connection is not reused;
    /// an HTTP/1.0 request is sent as 1.0 and its connection is not reused either (B9.13).
    #[tokio::test]
    async fn close_delimited_and_http10_answers_are_not_pooled() {
        let (addr, mut requests) = backend(vec![
            vec!["HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"],
            vec!["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
        ])
        .await;
        let pool = Arc::new(Backends::default());
        let (_, body) = fetch(&pool, addr, get(Method::GET)).await.ok().unwrap();
        assert_eq!(body, b"until the end");
        assert!(pool.take(addr).is_none());
        let mut req = get(Method::GET);
        *req.version_mut() = Version::HTTP_10;
        let (_, body) = fetch(&pool, addr, req).await.ok().unwrap();
        assert_eq!(body, b"ok");
        requests.recv().await.unwrap();
        assert!(requests
            .recv()
            .await
            .unwrap()
            .starts_with("GET /x HTTP/1.0\r\n"));
        assert!(pool.take(addr).is_none());
    }

    /// A request body in pieces, its length not known up front.
    struct Pieces(Vec<&'static str>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let next = (!self.0.is_empty()).then(|| self.0.remove(0));
            Poll::Ready(next.map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))))
        }
    }

    /// B9.12: a body of unknown length goes out chunked; a known one with its Content-Length.
    #[tokio::test]
    async fn request_bodies_are_framed() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (addr, mut requests) = backend(vec![vec![ok, ok]]).await;
        let pool = Arc::new(Backends::default());
        let req = Request::post("/up")
            .body(Pieces(vec!["ab", "cde"]))
            .unwrap();
        fetch(&pool, addr, req).await.ok().unwrap();
        let got = requests.recv().await.unwrap();
        let chunked = "transfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n";
        assert!(got.ends_with(chunked), "{got:?}");
        let req = Request::post("/up")
            .body(Full::new(Bytes::from("xyz")))
            .unwrap();
        fetch(&pool, addr, req).await.ok().unwrap();
        // The backend reads up to the head's end: the body comes before the next request.
        let got = requests.recv().await.unwrap();
        assert!(got.ends_with("content-length: 3\r\n\r\n"), "{got:?}");
    }

    /// B9.12: a pooled connection that the backend closed without answering: a body-less request
    /// goes again on a new connection. An idle connection the backend closed is not handed out.
    #[tokio::test]
    async fn closed_pooled_connections_are_replaced() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Reads the request, then closes without a word.
            let (mut first, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = first.read(&mut buf).await.unwrap();
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let _ = second.read(&mut buf).await.unwrap();
            second.write_all(ok.as_bytes()).await.unwrap();
            second
        });
        let pool = Arc::new(Backends::default());
        let stale = Conn::Pooled(Link {
            stream: connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        });
        let (_, body) = fetch_on(&pool, addr, stale, get(Method::GET), Duration::from_secs(5))
            .await
            .ok()
            .unwrap();
        assert_eq!(&body[..], b"ok");
        // The backend now closes the pooled connection: it is not handed out again.
        drop(server.await.unwrap());
        let mut handed_out = true;
        for _ in 0..100 {
            // The runtime learns of the close when its driver turns.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let Some(Conn::Pooled(link)) = pool.take(addr) else {
                handed_out = false;
                break;
            };
            pool.put(addr, link);
        }
        assert!(!handed_out);
    }

    /// B9.8 on a pooled connection, whose timer goes into the pool with it: a timer that ran
    /// out while its connection idled is re-armed for the next request, and a re-armed timer
    /// still ends an exchange the backend does not answer.
    #[tokio::test]
    async fn pooled_connections_time_requests_afresh() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(ok.as_bytes()).await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.write_all(ok.as_bytes()).await.unwrap();
            // The third request gets no answer.
            let _ = s.read(&mut buf).await.unwrap();
            s
        });
        let pool = Arc::new(Backends::default());
        let exchange = |timeout| {
            let conn = pool.take(addr);
            assert!(matches!(conn, Some(Conn::Pooled(..))));
            let exchange = fetch_on(&pool, addr, conn.unwrap(), get(Method::GET), timeout);
            // A timer that never fires fails the test instead of hanging it.
            tokio::time::timeout(Duration::from_secs(10), exchange)
        };
        let first = Conn::Fresh(connect(addr).await.unwrap());
        fetch_on(&pool, addr, first, get(Method::GET), Duration::from_secs(1))
            .await
            .ok()
            .unwrap();
        // The first request's deadline passes while the connection idles in the pool.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (_, body) = exchange(Duration::from_secs(5))
            .await
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(&body[..], b"ok");
        let third = exchange(Duration::from_millis(300)).await.unwrap();
        assert!(matches!(third, Err(Failure::Timeout)));
        drop(server.await.unwrap());
    }

    /// B9.12: a head that is not HTTP, or one that never ends, is a failed exchange (502).
    #[tokio::test]
    async fn bad_heads_fail() {
        let endless: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\n{}",
                "x-pad: 0123456789\r\n".repeat(5000)
            )
            .into_boxed_str(),
        );
        let (addr, _requests) = backend(vec![vec!["SMTP ready\r\n\r\n"], vec![endless]]).await;
        let pool = Arc::new(Backends::default());
        assert!(matches!(
            fetch(&pool, addr, get(Method::GET)).await,
            Err(Failure::Exchange)
        ));
        assert!(matches!(
            fetch(&pool, addr, get(Method::GET)).await,
            Err(Failure::Exchange)
        ));
    }

    /// RFC 9110 §7.6.1: a relayed answer carries none of the backend's hop-by-hop fields, nor
    /// the fields its `Connection` names; a protocol switch keeps them all for the client.
    #[test]
    fn answers_lose_hop_by_hop_fields() {
        let head = |text: &str| {
            parse_head(&mut BytesMut::from(text), false)
                .unwrap()
                .unwrap()
        };
        let h = head(
            "HTTP/1.1 200 OK\r\nX-Hop: 0\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nTransfer-Encoding: gzip, chunked\r\nX-Keep: 2\r\n\r\n",
        );
        assert_eq!(h.lines.get(true), b"X-Keep: 2\r\n");
        assert!(matches!(h.framing, Framing::Chunked(Chunk::Size)));
        assert!(h.keeps_open);

        let h = head("HTTP/1.1 200 OK\r\nconnection: Close\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(h.framing, Framing::Length(3)));
        assert!(!h.keeps_open);
        assert_eq!(h.lines.get(true), b"Content-Length: 3\r\n");

        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert!(matches!(h.framing, Framing::Close));
        assert!(!h.keeps_open);

        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(
            h.lines.get(true),
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        );
        assert!(!h.keeps_open);

        assert!(parse_head(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"),
            false
        )
        .is_err());
    }

    /// B9.15: an answer's fields go to an HTTP/1.1 client as the backend sent them, in
    /// `name: value` CRLF lines (a bare LF or a missing space after the colon made regular);
    /// its `Content-Length` lines come last, to be left out when the LB sends its own length.
    /// A field's value is found in them, and the map built from them where one is needed holds
    /// the same fields and values.
    #[test]
    fn answers_keep_their_fields_as_lines() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\nContent-Length: 2\nSet-Cookie: a=1\r\nDate:Mon\r\n\
             X-Empty: \r\nSet-Cookie: b=2\r\n\r\nok",
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(&buf[..], b"ok");
        let fields = "Set-Cookie: a=1\r\nDate: Mon\r\nX-Empty: \r\nSet-Cookie: b=2\r\n";
        assert_eq!(h.lines.get(false), fields.as_bytes());
        let with_length = format!("{fields}Content-Length: 2\r\n");
        assert_eq!(h.lines.get(true), with_length.as_bytes());
        assert!(h.lines.has_length() && h.lines.date);
        assert_eq!(h.lines.value("set-cookie"), Some(&b"a=1"[..]));
        assert_eq!(h.lines.value("x-empty"), Some(&b""[..]));
        assert_eq!(h.lines.value("set"), None);

        let map = h.lines.into_map().unwrap();
        let cookies: Vec<&[u8]> = map
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(map[header::DATE], "Mon");
        assert_eq!(map["x-empty"], "");
        assert_eq!(map[header::CONTENT_LENGTH], "2");
        assert_eq!(map.len(), 5);

        let h = parse_head(
            &mut BytesMut::from("HTTP/1.1 204 No Content\r\n\r\n"),
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.lines.get(true).is_empty() && !h.lines.has_length() && !h.lines.date);
    }
}
