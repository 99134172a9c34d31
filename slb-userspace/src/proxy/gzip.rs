//! Response compression of layer-7 listeners with `Gzip=on` (B9.16).
use std::{
    io::Write as _,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use http_body_util::BodyExt as _;
use hyper::{
    body::{Body as _, Frame},
    header::{
        HeaderValue, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
        CONTENT_TYPE, ETAG, VARY,
    },
    HeaderMap, Method, Response, StatusCode,
};

use super::forward::{list_items, Body, BodyError};

/// B9.16 DECISION: the HTTP listener's list plus the HTTPS listener's `application/json`.
const MEDIA_TYPES: [&str; 9] = [
    "text/xml",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "application/rss+xml",
    "application/atom+xml",
    "application/xml",
    "application/json",
];

/// Whether the client takes gzip: `Accept-Encoding` gives `gzip` (or `x-gzip`, its old name),
/// or failing that `*`, a q above 0 (RFC 9110 §12.5.3). An entry with a malformed q counts
/// as absent.
pub fn accepts(request_headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in list_items(request_headers, ACCEPT_ENCODING) {
        let mut params = item.split(';');
        let coding = params.next().unwrap_or_default().trim();
        let q = params.find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim().eq_ignore_ascii_case("q").then(|| value.trim())
        });
        let q = match q.map(str::parse::<f32>) {
            None => 1.0,
            Some(Ok(q)) if (0.0..=1.0).contains(&q) => q,
            Some(_) => continue,
        };
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// The response gzip-compressed as it streams, when it is worth it and allowed; otherwise
/// unchanged. The caller checks `Gzip=on` and [`accepts`] first.
pub fn compress(method: &Method, resp: Response<Body>) -> Response<Body> {
    if !compressible(method, &resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let h = &mut parts.headers;
    h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    h.remove(CONTENT_LENGTH);
    if !list_items(h, VARY).any(|item| item == "*" || item.eq_ignore_ascii_case("accept-encoding"))
    {
        h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    // The compressed bytes differ from the ones a strong validator promised.
    if let Some(tag) = h.get(ETAG).filter(|t| !t.as_bytes().starts_with(b"W/")) {
        if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", tag.as_bytes()].concat()) {
            h.insert(ETAG, weak);
        }
    }
    let body = Gzip {
        inner: body,
        encoder: Some(GzEncoder::new(Vec::new(), Compression::default())),
        trailers: None,
    };
    Response::from_parts(parts, body.boxed())
}

/// Whether a `Content-Type` value names one of the types compressed.
pub fn compressible_type(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    let media_type = media_type.trim_ascii();
    MEDIA_TYPES
        .iter()
        .any(|t| t.as_bytes().eq_ignore_ascii_case(media_type))
}

fn compressible(method: &Method, resp: &Response<Body>) -> bool {
    let h = resp.headers();
    let status = resp.status();
    let body = resp.body();
    h.get(CONTENT_TYPE)
        .is_some_and(|v| compressible_type(v.as_bytes()))
        && !h.contains_key(CONTENT_ENCODING)
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
        // Content-Range counts bytes of the uncompressed representation.
        && status != StatusCode::PARTIAL_CONTENT
        && method != Method::HEAD
        // RFC 9111 §5.2.2.6: a proxy must not transform such content.
        && !list_items(h, CACHE_CONTROL).any(|item| item.eq_ignore_ascii_case("no-transform"))
        && !body.is_end_stream()
        && body.size_hint().exact() != Some(0)
}

/// A body gzip-compressed frame by frame: each data frame is compressed and flushed at once,
/// so what a slow backend sent reaches the client without waiting for more.
struct Gzip {
    inner: Body,
    /// `None` once the gzip trailer is out, or the body failed.
    encoder: Option<GzEncoder<Vec<u8>>>,
    /// The backend's trailers, sent after the gzip trailer.
    trailers: Option<HeaderMap>,
}

impl Gzip {
    /// The gzip trailer; `None` ends the body early, a truncated gzip stream the client
    /// rejects.
    fn finish(&mut self) -> Option<Bytes> {
        let encoder = self.encoder.take()?;
        match encoder.finish() {
            Ok(out) => Some(out.into()),
            Err(e) => {
                log::warn!("gzip: {e}");
                self.trailers = None;
                None
            }
        }
    }
}

impl hyper::body::Body for Gzip {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // No gzip trailer after a failure: it would make the cut body look whole.
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => return Poll::Ready(this.finish().map(|out| Ok(Frame::data(out)))),
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => {
                    if let Err(e) = encoder.write_all(&data).and_then(|()| encoder.flush()) {
                        log::warn!("gzip: {e}");
                        this.encoder = None;
                        return Poll::Ready(None);
                    }
                    let out = std::mem::take(encoder.get_mut());
                    return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                }
                Err(frame) => {
                    this.trailers = frame.into_trailers().ok();
                    return Poll::Ready(this.finish().map(|out| Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use flate2::read::GzDecoder;
    use http_body_util::{Empty, Full};
    use hyper::{
        header::{HeaderName, HOST},
        Request,
    };
    use hyper_util::rt::TokioIo;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
        sync::mpsc,
    };

    use super::*;

    fn request(accept_encoding: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in accept_encoding {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// B9.16: gzip only when the client takes it: named (any case, `x-gzip` too) or through
    /// `*`, with a q above 0; an explicit `gzip;q=0` beats `*`.
    #[test]
    fn accepts_gzip_with_positive_q() {
        for yes in [
            &["gzip"][..],
            &["deflate, gzip;q=0.5"],
            &["GZIP"],
            &["br", "gzip"],
            &["x-gzip"],
            &["*"],
            &["br;q=1, *;q=0.1"],
            &["gzip; Q=0.001"],
        ] {
            assert!(accepts(&request(yes)), "{yes:?}");
        }
        for no in [
            &[][..],
            &["identity"],
            &["br, deflate"],
            &["gzip;q=0"],
            &["gzip; q=0.000"],
            &["*;q=0"],
            &["gzip;q=0, *"],
            &["gzip;q=high"],
            &["gzip;q=2"],
            &["gzipped"],
        ] {
            assert!(!accepts(&request(no)), "{no:?}");
        }
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Body> {
        let mut r = Response::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            r.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        r
    }

    fn gunzip(compressed: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        GzDecoder::new(compressed).read_to_end(&mut plain).unwrap();
        plain
    }

    /// B9.16: a compressed response says so, loses its Content-Length, varies on
    /// Accept-Encoding (added to the Vary it had) and keeps only a weak ETag.
    #[tokio::test]
    async fn compressed_response_headers() {
        let text = "body { color: red }\n".repeat(50);
        let text: &'static str = text.leak();
        let resp = response(
            200,
            &[
                ("content-type", "TEXT/CSS ; charset=utf-8"),
                ("content-length", &text.len().to_string()),
                ("vary", "Origin"),
                ("etag", "\"v1\""),
            ],
            text,
        );
        let resp = compress(&Method::GET, resp);
        let h = resp.headers();
        assert_eq!(h.get(CONTENT_ENCODING).unwrap(), "gzip");
        assert!(h.get(CONTENT_LENGTH).is_none());
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        assert_eq!(h.get(ETAG).unwrap(), "W/\"v1\"");
        let compressed = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(compressed.len() < text.len() / 4);
        assert_eq!(gunzip(&compressed), text.as_bytes());

        for (vary, etag) in [("accept-encoding, Origin", "W/\"v1\""), ("*", "W/\"x\"")] {
            let resp = response(
                200,
                &[
                    ("content-type", "application/json"),
                    ("vary", vary),
                    ("etag", etag),
                ],
                "{}",
            );
            let resp = compress(&Method::POST, resp);
            let h = resp.headers();
            assert_eq!(h.get(CONTENT_ENCODING).unwrap(), "gzip");
            let got: Vec<_> = h.get_all(VARY).iter().collect();
            assert_eq!(got, [vary]);
            assert_eq!(h.get(ETAG).unwrap(), etag);
            let compressed = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(gunzip(&compressed), b"{}");
        }
    }

    /// B9.16: the 9 media types are compressed, in any case and with parameters.
    #[tokio::test]
    async fn every_listed_media_type_is_compressed() {
        for media_type in MEDIA_TYPES {
            let content_type = format!("{}; charset=utf-8", media_type.to_uppercase());
            let resp = response(200, &[("content-type", &content_type)], "x");
            let resp = compress(&Method::GET, resp);
            assert_eq!(resp.headers().get(CONTENT_ENCODING).unwrap(), "gzip");
            let compressed = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(gunzip(&compressed), b"x");
        }
    }

    /// B9.16: responses of other types, already encoded, without a body by their status or
    /// method, partial, marked no-transform, or empty pass unchanged.
    #[tokio::test]
    async fn other_responses_pass_unchanged() {
        let plain = ("content-type", "text/plain");
        let cases = [
            (
                "other type",
                Method::GET,
                response(200, &[("content-type", "image/png")], "x"),
            ),
            ("no type", Method::GET, response(200, &[], "x")),
            (
                "type in a parameter",
                Method::GET,
                response(200, &[("content-type", "image/svg; x=text/plain")], "x"),
            ),
            (
                "encoded",
                Method::GET,
                response(200, &[plain, ("content-encoding", "br")], "x"),
            ),
            ("1xx", Method::GET, response(103, &[plain], "x")),
            ("204", Method::GET, response(204, &[plain], "x")),
            ("304", Method::GET, response(304, &[plain], "x")),
            (
                "206",
                Method::GET,
                response(206, &[plain, ("content-range", "bytes 0-0/9")], "x"),
            ),
            (
                "HEAD",
                Method::HEAD,
                response(200, &[plain, ("content-length", "9")], ""),
            ),
            (
                "no-transform",
                Method::GET,
                response(
                    200,
                    &[plain, ("cache-control", "max-age=9, No-Transform")],
                    "x",
                ),
            ),
            ("empty", Method::GET, response(200, &[plain], "")),
            ("empty body type", Method::GET, {
                let mut r = Response::new(crate::proxy::forward::empty());
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            }),
        ];
        for (case, method, resp) in cases {
            let status = resp.status();
            let headers = resp.headers().clone();
            let resp = compress(&method, resp);
            assert_eq!(resp.status(), status, "{case}");
            assert_eq!(resp.headers(), &headers, "{case}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let expected: &[u8] = if case == "HEAD" || case.starts_with("empty") {
                b""
            } else {
                b"x"
            };
            assert_eq!(body, expected, "{case}");
        }
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
    }

    /// A backend on loopback: answers one request with `head`, then writes each of `parts`
    /// when the test lets it (one message on the returned sender each), then closes.
    async fn backend(
        head: &'static str,
        parts: Vec<Vec<u8>>,
    ) -> (Response<Body>, mpsc::UnboundedSender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, mut allowed) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                req.push(s.read_u8().await.unwrap());
            }
            s.write_all(head.as_bytes()).await.unwrap();
            for part in parts {
                if allowed.recv().await.is_none() {
                    return;
                }
                s.write_all(&part).await.unwrap();
            }
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header(HOST, "backend")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        (resp.map(|b| b.map_err(BodyError::from).boxed()), go)
    }

    /// B9.16: a chunked backend response is compressed as it streams: what the backend sent
    /// so far decodes on the client's side before the backend sends more (the second chunk
    /// is held back until then), and the whole decodes to the original.
    #[tokio::test]
    async fn streamed_frames_reach_the_client_at_once_and_round_trip() {
        let first = b"first line from a slow backend\n".to_vec();
        let second: Vec<u8> = (0..3000)
            .flat_map(|i| format!("line {i} of many\n").into_bytes())
            .collect();
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        let parts = vec![
            chunk(&first),
            [
                chunk(&second[..20_000]),
                chunk(&second[20_000..]),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ];
        let (resp, go) = backend(head, parts).await;
        let resp = compress(&Method::GET, resp);
        assert_eq!(resp.headers().get(CONTENT_ENCODING).unwrap(), "gzip");
        let mut body = resp.into_body();
        let mut compressed = Vec::new();
        let mut so_far = flate2::write::GzDecoder::new(Vec::new());
        go.send(()).unwrap();
        while so_far.get_ref().len() < first.len() {
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            compressed.extend_from_slice(&data);
            so_far.write_all(&data).unwrap();
            so_far.flush().unwrap();
        }
        assert_eq!(so_far.get_ref(), &first);
        go.send(()).unwrap();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            compressed.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        assert!(frames >= 2, "the rest came in {frames} frame(s)");
        let plain = gunzip(&compressed);
        assert_eq!(plain, [first, second].concat());
        assert!(compressed.len() < plain.len() / 4);
    }

    /// B9.16: the backend's trailers follow the gzip trailer.
    #[tokio::test]
    async fn trailers_pass_through() {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ntransfer-encoding: chunked\r\n\r\n";
        let parts = vec![[chunk(b"<a/>"), b"0\r\nx-checksum: abc\r\n\r\n".to_vec()].concat()];
        let (resp, go) = backend(head, parts).await;
        go.send(()).unwrap();
        let resp = compress(&Method::GET, resp);
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().unwrap().get("x-checksum").unwrap(),
            "abc"
        );
        assert_eq!(gunzip(&collected.to_bytes()), b"<a/>");
    }

    /// B9.16: a backend that breaks off mid-body is an error for the client too, and no gzip
    /// trailer makes what came look whole.
    #[tokio::test]
    async fn backend_error_passes_through() {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
        let (resp, go) = backend(head, vec![b"{\"cut\":".to_vec()]).await;
        go.send(()).unwrap();
        let resp = compress(&Method::GET, resp);
        let mut body = resp.into_body();
        let mut compressed = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(frame)) => compressed.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("the body ended as if whole"),
            }
        };
        let cause = std::iter::successors(Some(&*err as &dyn std::error::Error), |e| e.source())
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        assert_eq!(cause, Some(std::io::ErrorKind::UnexpectedEof), "{err:?}");
        assert!(body.frame().await.is_none());
        let mut so_far = flate2::write::GzDecoder::new(Vec::new());
        so_far.write_all(&compressed).unwrap();
        so_far.flush().unwrap();
        assert_eq!(so_far.get_ref(), b"{\"cut\":");
        assert!(GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut Vec::new())
            .is_err());
    }
}
