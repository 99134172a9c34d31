//! One client request through a layer-7 listener (§9): redirect, or pick a backend (forwarding
//! rule, sticky cookie, scheduler), rewrite the headers, forward over HTTP/1.x and relay the
//! answer (compressed, with its cookie), or answer 502/503/504 ourselves. WebSocket upgrades
//! become a byte tunnel (B9.18).
use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, Full};
use hyper::{
    header::{
        self, HeaderName, HeaderValue, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_PROTOCOL,
    },
    http::uri::PathAndQuery,
    HeaderMap, Method, Request, Response, StatusCode, Version,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    access::{self, Record},
    backend::{self, Conn, Failure},
    bandwidth,
    codec::{FieldLines, Name},
    gzip, rules, sticky, Route, Shared,
};
use crate::config::StickySession;

pub type Body = BoxBody<Bytes, BodyError>;
/// Why a body ended early: the client's or the backend's connection failed.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

const SLB_ID: HeaderName = HeaderName::from_static("slb-id");
const SLB_IP: HeaderName = HeaderName::from_static("slb-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_CLIENT_SRCPORT: HeaderName =
    HeaderName::from_static("x-forwarded-client-srcport");

/// Headers the LB sets itself; what a client sent under these names is dropped (B9.2–B9.5).
const OWN: [HeaderName; 5] = [
    SLB_ID,
    SLB_IP,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    X_FORWARDED_CLIENT_SRCPORT,
];

/// The client of a connection, with its address formatted once for `X-Forwarded-For`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    ip: HeaderValue,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            ip: ip_value(addr.ip()),
        }
    }
}

/// `ip` as a field value. IPv4 addresses are written octet by octet with `itoa`: through
/// `Display` (which pads, and writes into a growing `String`) an address cost more than the rest
/// of accepting its connection.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
    };
    let mut text = BytesMut::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.put_u8(b'.');
        }
        text.put_slice(digits.format(octet).as_bytes());
    }
    HeaderValue::from_maybe_shared(text.freeze()).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The items of the comma-separated header `name` (all its fields), trimmed.
pub fn list_items(headers: &HeaderMap, name: HeaderName) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fields that Connection names are hop-by-hop too; `close` and `keep-alive` name none.
    let named: Vec<HeaderName> = list_items(headers, header::CONNECTION)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    remove_where(headers, |k| Name::of(k.as_str().as_bytes()).hop_by_hop());
}

/// Removes the fields `pick` chooses. Scanning the few fields a message has costs less than a
/// hashed removal of every name it might carry, and most messages carry none of them.
fn remove_where(headers: &mut HeaderMap, pick: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|k| pick(k)).cloned() {
        headers.remove(name);
    }
}

/// The `Upgrade` field of an HTTP/1.1 request whose `Connection` lists `upgrade`, kept in the
/// request's extensions when the head lost its hop-by-hop fields.
#[derive(Clone)]
pub struct Upgrade(pub HeaderValue);

/// A request to switch protocols (WebSocket, B9.18): an HTTP/1.1 `Upgrade`, or an HTTP/2
/// extended CONNECT whose `:protocol` names it (RFC 8441). The value is the protocol.
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.version() {
        Version::HTTP_11 => req.extensions().get::<Upgrade>().map(|u| u.0.clone()),
        Version::HTTP_2 if req.method() == Method::CONNECT => req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .and_then(|p| HeaderValue::from_str(p.as_str()).ok()),
        _ => None,
    }
}

/// `Sec-WebSocket-Key` for a backend handshake that an HTTP/2 client started: RFC 8441 has no
/// key, the backend's HTTP/1.1 handshake needs one (16 random bytes, base64).
fn websocket_key() -> Option<HeaderValue> {
    let mut nonce = [0u8; 16];
    openssl::rand::rand_bytes(&mut nonce).ok()?;
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(nonce)).ok()
}

/// The answer to an HTTP/2 extended CONNECT whose backend switched protocols: `200` (HTTP/2
/// has no `101`), with the negotiated subprotocol and extensions, and no HTTP/1.1 handshake
/// fields.
fn connect_accepted(backend: &HeaderMap) -> Response<Body> {
    let mut r = Response::new(empty());
    for name in [SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_EXTENSIONS] {
        if let Some(v) = backend.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// The request's host: the Host header, or the HTTP/2 authority.
fn host_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// The request as the backend gets it: HTTP/1.1 for 1.1 and 2 clients, 1.0 otherwise (B9.13),
/// `X-Forwarded-For` extended with the client (B9.1) and the switched headers set (B9.2–B9.5).
fn backend_request<B>(
    req: &mut Request<B>,
    route: &Route,
    client: &Client,
    host: Option<&str>,
    upgrade: Option<HeaderValue>,
) {
    let version = req.version();
    // RFC 8441 §5: the extended CONNECT is the HTTP/1.1 upgrade's GET.
    let extended_connect = version == Version::HTTP_2 && upgrade.is_some();
    if extended_connect {
        *req.method_mut() = Method::GET;
    }
    let headers = req.headers_mut();
    // HTTP/1.x heads lost theirs when parsed (`h1::parse_head`).
    if version == Version::HTTP_2 {
        strip_hop_by_hop(headers);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if extended_connect {
        if let Some(key) = websocket_key() {
            headers.insert(SEC_WEBSOCKET_KEY, key);
        }
    }
    if version == Version::HTTP_2 {
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
        let cookies: Vec<&str> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if cookies.len() > 1 {
            if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
                headers.insert(header::COOKIE, v);
            }
        }
        if !headers.contains_key(header::HOST) {
            if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    remove_where(headers, |k| OWN.contains(k));
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", client.addr.ip())).ok()
        }
        _ => Some(client.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let put = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    // Values are formatted only for the switches that are on.
    let h = &route.http;
    if h.xff_slb_id {
        put(headers, SLB_ID, &route.load_balancer_id);
    }
    if h.xff_slb_ip {
        put(headers, SLB_IP, &route.vip.to_string());
    }
    if h.xff_proto {
        put(headers, X_FORWARDED_PROTO, route.scheme);
    }
    if h.xff_slb_port {
        put(headers, X_FORWARDED_PORT, &route.listener_port.to_string());
    }
    if h.xff_client_src_port {
        put(
            headers,
            X_FORWARDED_CLIENT_SRCPORT,
            &client.addr.port().to_string(),
        );
    }
    *req.version_mut() = match version {
        Version::HTTP_11 | Version::HTTP_2 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Absolute-form targets and HTTP/2 URIs become origin-form; Host carries the authority.
    if req.uri().authority().is_some() {
        if let Some(uri) = req
            .uri()
            .path_and_query()
            .and_then(|pq| pq.as_str().parse().ok())
        {
            *req.uri_mut() = uri;
        }
    }
}

/// B9.20: `301` to `https://<host without port>[:<port> unless 443]<path and query>`.
fn redirect(route: &Route, host: Option<&str>, target: &str, port: u16) -> Response<Body> {
    let name = match host.map(rules::without_port).filter(|h| !h.is_empty()) {
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => h.to_string(),
        None => crate::health::host_of(route.vip),
    };
    let location = match port {
        443 => format!("https://{name}{target}"),
        _ => format!("https://{name}:{port}{target}"),
    };
    let mut r = text(StatusCode::MOVED_PERMANENTLY, "301 moved permanently\n");
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Runs a backend exchange as part of the request's future, and on its own task from the
/// moment that future is dropped (the client went away): the backend exchange is not cut off
/// in the middle (B9.11). Cheaper than a task per request, which only the rare early leave needs.
struct Detached<T: Send + 'static>(Option<Pin<Box<dyn Future<Output = T> + Send>>>);

impl<T: Send + 'static> Detached<T> {
    fn new(f: impl Future<Output = T> + Send + 'static) -> Self {
        Detached(Some(Box::pin(f)))
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(f) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let out = ready!(f.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let (Some(f), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(f);
        }
    }
}

/// The backend side of a switched protocol (B9.18): its connection, and what it sent right
/// after its `101`. The client side is the server's to give, once the `101` went out.
pub struct Tunnel {
    backend: TcpStream,
    early: Bytes,
    addr: SocketAddr,
}

impl Tunnel {
    /// Relays bytes both ways; `client_early`: what the client sent past its request head.
    pub async fn relay<C>(mut self, mut client: C, client_early: Bytes)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let relayed = async {
            self.backend.write_all(&client_early).await?;
            client.write_all(&self.early).await?;
            tokio::io::copy_bidirectional(&mut client, &mut self.backend).await
        };
        if let Err(e) = relayed.await {
            log::debug!("tunnel to {}: {e}", self.addr);
        }
    }
}

/// What a request is answered with.
pub struct Answer {
    pub resp: Response<Body>,
    /// The backend's fields as they came, for an HTTP/1.x client, when nothing here reads or
    /// changes them; they go out before those in `resp`'s map.
    pub lines: Option<FieldLines>,
    /// After a `101`: the backend side of the tunnel.
    pub tunnel: Option<Tunnel>,
}

impl Answer {
    /// An answer of the LB's own.
    pub fn own(resp: Response<Body>) -> Self {
        Answer {
            resp,
            lines: None,
            tunnel: None,
        }
    }
}

/// Serves one request: 503 with no usable backend (B4.17), 502 when the backend fails, 504 when
/// it does not answer within `RequestTimeout` (B9.8).
pub async fn handle<B>(
    req: Box<Request<B>>,
    route: Arc<Route>,
    client: Client,
    shared: Arc<Shared>,
) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError> + Send,
{
    let start = super::now();
    let mut record = Record {
        listener: route.name.clone(),
        client: client.addr,
        method: req.method().clone(),
        host: host_of(&req),
        path: req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        version: match req.version() {
            Version::HTTP_2 => "2",
            Version::HTTP_11 => "1.1",
            Version::HTTP_10 => "1.0",
            _ => "0.9",
        },
        backend: None,
        status: StatusCode::OK,
        start,
        head: Default::default(),
    };
    let (mut answer, backend) = respond(
        req,
        &route,
        &client,
        &shared,
        record.host.as_ref().and_then(|h| h.to_str().ok()),
        record.path.as_str(),
    )
    .await;
    record.backend = backend;
    record.status = answer.resp.status();
    record.head = super::now().duration_since(start);
    let resp = match &route.bandwidth {
        Some(bucket) => bandwidth::limited(answer.resp, bucket.clone()),
        None => answer.resp,
    };
    answer.resp = access::logged(resp, record, shared.metrics.clone());
    answer
}

async fn respond<B>(
    mut req: Box<Request<B>>,
    route: &Arc<Route>,
    client: &Client,
    shared: &Shared,
    host: Option<&str>,
    target: &str,
) -> (Answer, Option<SocketAddr>)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError> + Send,
{
    if let Some(port) = route.http.forward_port {
        return (Answer::own(redirect(route, host, target, port)), None);
    }
    let group = rules::select(&route.http.rules, host, req.uri().path())
        .and_then(|rule| route.http.rules.iter().position(|r| std::ptr::eq(r, rule)));
    let pool = route.pool(group);
    let sticky = &route.http.sticky_session;
    let wanted = sticky::requested(sticky, req.headers_mut());
    // B6.8: a cookie for a backend that is gone or unusable is ignored.
    let pinned = wanted.as_deref().and_then(|t| {
        (0..pool.members.len())
            .find(|i| sticky::token(pool.addr(*i)) == t && route.usable(&pool.members[*i]))
    });
    let mut order = pinned
        .into_iter()
        .chain(
            pool.order(|m| route.usable(m))
                .filter(move |i| Some(*i) != pinned),
        )
        .peekable();
    if order.peek().is_none() {
        let r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 no backend available\n",
        );
        return (Answer::own(r), None);
    }
    let upgrade = upgrade_of(&req);
    let http2 = req.version() == Version::HTTP_2;
    let mut connected = None;
    for i in order {
        let addr = pool.addr(i);
        if upgrade.is_none() {
            if let Some(conn) = shared.backends.take(addr) {
                connected = Some((i, addr, conn));
                break;
            }
        }
        match Box::pin(backend::connect(addr)).await {
            Ok(s) => {
                connected = Some((i, addr, Conn::Fresh(s)));
                break;
            }
            Err(e) => log::debug!("{}: backend {addr}: {e}", route.name),
        }
    }
    let bad_gateway = || Answer::own(text(StatusCode::BAD_GATEWAY, "502 bad gateway\n"));
    let Some((i, addr, conn)) = connected else {
        return (bad_gateway(), None);
    };
    let method = req.method().clone();
    let gzip = route.http.gzip && gzip::accepts(req.headers());
    let upgrading = upgrade.is_some();
    backend_request(&mut *req, route, client, host, upgrade);
    let timeout = std::time::Duration::from_secs(route.http.request_timeout.into());
    let exchange = {
        let route = route.clone();
        let backends = shared.backends.clone();
        async move {
            let _in_flight = route.pool(group).start(i);
            backends.exchange(addr, conn, req, timeout).await
        }
    };
    let (resp, lines) = match Detached::new(exchange).await {
        Ok(answer) => answer,
        Err(Failure::Timeout) => {
            let r = text(StatusCode::GATEWAY_TIMEOUT, "504 gateway timeout\n");
            return (Answer::own(r), Some(addr));
        }
        Err(Failure::Exchange) => return (bad_gateway(), Some(addr)),
    };
    let (mut parts, body) = resp.into_parts();
    // The fields go into a map only where they are read or changed here, or for HTTP/2.
    let gzip = gzip
        && lines
            .value("content-type")
            .is_some_and(gzip::compressible_type);
    let lines = if http2 || gzip || upgrading || matches!(sticky, StickySession::Server { .. }) {
        match lines.into_map() {
            Ok(map) => parts.headers = map,
            Err(e) => {
                log::debug!("{}: backend {addr}: {e}", route.name);
                return (bad_gateway(), Some(addr));
            }
        }
        None
    } else {
        Some(lines)
    };
    if parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrading {
        let tunnel = body.into_tunnel().map(|(backend, early)| Tunnel {
            backend,
            early,
            addr,
        });
        let resp = if http2 {
            connect_accepted(&parts.headers)
        } else {
            Response::from_parts(parts, empty())
        };
        let answer = Answer {
            resp,
            lines,
            tunnel,
        };
        return (answer, Some(addr));
    }
    sticky::respond(
        sticky,
        parts.status,
        wanted.as_deref(),
        addr,
        &mut parts.headers,
    );
    let resp = Response::from_parts(parts, BoxBody::new(body));
    let resp = if gzip {
        gzip::compress(&method, resp)
    } else {
        resp
    };
    let answer = Answer {
        resp,
        lines,
        tunnel: None,
    };
    (answer, Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// B9.1: the address `X-Forwarded-For` carries is the client's, as `Display` writes it.
    #[test]
    fn client_addresses_read_as_displayed() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.10.200",
            "1.20.3.40",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }
}
