//! One client request through a layer-7 listener (§9): pick a backend, rewrite the headers,
//! forward over HTTP/1.x and relay the answer, or answer 502/503/504 ourselves.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{
    body::Incoming,
    header::{HeaderName, HeaderValue},
    HeaderMap, Request, Response, StatusCode, Version,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Route;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// The TCP handshake to a backend gives up after this and tries the next backend (B9.10).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one hop's connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers the LB sets itself; what a client sent under these names is dropped (B9.2–B9.5).
const OWN: [&str; 5] = [
    "slb-id",
    "slb-ip",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-client-srcport",
];

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// The request as the backend gets it: HTTP/1.1 for 1.1 and 2 clients, 1.0 otherwise (B9.13),
/// `X-Forwarded-For` extended with the client (B9.1) and the switched headers set (B9.2–B9.4).
fn backend_request(
    mut req: Request<Incoming>,
    route: &Route,
    client: SocketAddr,
) -> Request<Incoming> {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    for n in OWN {
        headers.remove(n);
    }
    let ip = client.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let set = |headers: &mut HeaderMap, on: bool, name: &'static str, value: &str| {
        if let (true, Ok(v)) = (on, HeaderValue::from_str(value)) {
            headers.insert(name, v);
        }
    };
    let h = &route.http;
    set(headers, h.xff_slb_id, "slb-id", &route.load_balancer_id);
    set(headers, h.xff_slb_ip, "slb-ip", &route.vip.to_string());
    set(headers, h.xff_proto, "x-forwarded-proto", route.scheme);
    set(
        headers,
        h.xff_slb_port,
        "x-forwarded-port",
        &route.listener_port.to_string(),
    );
    set(
        headers,
        h.xff_client_src_port,
        "x-forwarded-client-srcport",
        &client.port().to_string(),
    );
    let version = req.version();
    *req.version_mut() = match version {
        Version::HTTP_11 | Version::HTTP_2 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Absolute-form targets become origin-form; the Host header carries the authority.
    if let Some(pq) = req.uri().path_and_query().cloned() {
        if req.uri().authority().is_some() {
            if let Ok(uri) = pq.as_str().parse() {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

enum Failure {
    /// The backend broke the exchange.
    Exchange,
    /// No response head within `RequestTimeout`.
    Timeout,
}

async fn exchange(
    addr: SocketAddr,
    stream: TcpStream,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Response<Incoming>, Failure> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("backend connection {addr}: {e}");
        }
    });
    match tokio::time::timeout(timeout, sender.send_request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            log::debug!("backend {addr}: {e}");
            Err(Failure::Exchange)
        }
        Err(_) => Err(Failure::Timeout),
    }
}

/// Serves one request: 503 with no usable backend (B4.17), 502 when the backend fails, 504 when
/// it does not answer within `RequestTimeout` (B9.8).
pub async fn handle(
    req: Request<Incoming>,
    route: Arc<Route>,
    client: SocketAddr,
) -> Response<Body> {
    let order = route.pool.order(|m| route.usable(m));
    if order.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 no backend available\n",
        );
    }
    let mut connected = None;
    for i in order {
        let addr = route.pool.addr(i);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                connected = Some((i, addr, s));
                break;
            }
            Ok(Err(e)) => log::debug!("{}: backend {addr}: {e}", route.name),
            Err(_) => log::debug!("{}: backend {addr}: connect timed out", route.name),
        }
    }
    let Some((i, addr, stream)) = connected else {
        return text(StatusCode::BAD_GATEWAY, "502 bad gateway\n");
    };
    let req = backend_request(req, &route, client);
    let timeout = Duration::from_secs(route.http.request_timeout.into());
    // On its own task, so a client that goes away does not cut the backend exchange off in
    // the middle (B9.11).
    let task = {
        let route = route.clone();
        tokio::spawn(async move {
            let _in_flight = route.pool.start(i);
            exchange(addr, stream, req, timeout).await
        })
    };
    match task.await {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Ok(Err(Failure::Timeout)) => text(StatusCode::GATEWAY_TIMEOUT, "504 gateway timeout\n"),
        Ok(Err(Failure::Exchange)) | Err(_) => text(StatusCode::BAD_GATEWAY, "502 bad gateway\n"),
    }
}
