//! The API over HTTP: GET with a query string or POST with a query string and/or a form body
//! (slb-api.md §1.1, §1.3a); signature check; `Format` JSON or XML; `RequestId` on every
//! response; errors as §1.5 shows them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpListener;

use super::sign::{self, Scheme, Verifier};
use super::{Api, ApiError, VERSION};
use crate::config::ParamMap;

/// Larger requests are refused: the biggest legitimate one is a certificate upload.
/// Large enough for `ApplyConfiguration` of a few thousand listeners.
const MAX_BODY: usize = 16 << 20;

/// Parameters every request may carry that are not the action's own (§1.2).
const COMMON: &[&str] = &[
    "Action",
    "Format",
    "Version",
    "AccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "SignatureType",
    "Timestamp",
    "TimeStamp",
    "RegionId",
    "OwnerId",
    "OwnerAccount",
    "ResourceOwnerId",
    "ResourceOwnerAccount",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

fn percent_decode(s: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn bad_format(what: &str) -> ApiError {
    ApiError::new("InternalError", 400, format!("Illegal format: {what}"))
}

/// `a=1&b=2` → pairs; refuses bad escapes and non-UTF-8 (§1.1: requests are UTF-8).
fn parse_pairs(raw: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    raw.split(|b| *b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = match part.iter().position(|b| *b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            let dec = |x: &[u8]| {
                percent_decode(x, true)
                    .ok_or_else(|| bad_format("bad percent escape"))
                    .and_then(|b| {
                        String::from_utf8(b).map_err(|_| bad_format("parameters must be UTF-8"))
                    })
            };
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

struct RawRequest {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Bytes,
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// What the request asked for, and the action's own parameters.
struct Call {
    action: String,
    format: Format,
    params: ParamMap,
}

fn prepare(api: &Api, verifier: &Verifier, req: &RawRequest) -> Result<Call, (ApiError, Format)> {
    let all: Vec<&(String, String)> = req.query.iter().chain(req.form.iter()).collect();
    let get = |name: &str| all.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let is_v3 = header(&req.headers, "authorization").is_some_and(|a| a.starts_with("ACS3-"));
    let format = match get("Format") {
        Some(f) if f.eq_ignore_ascii_case("xml") => Format::Xml,
        Some(f) if f.eq_ignore_ascii_case("json") => Format::Json,
        Some(_) => return Err((bad_format("Format must be JSON or XML"), Format::Json)),
        // The V3 SDKs ask for JSON (accept: application/json); §1.2's default is XML.
        None if is_v3 => Format::Json,
        None => Format::Xml,
    };
    let fail = |e: ApiError| (e, format);
    if !matches!(req.method.as_str(), "GET" | "POST") {
        return Err(fail(bad_format("only GET and POST are accepted")));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &all {
        if !seen.insert(k.as_str()) {
            return Err(fail(ApiError::invalid(format!(
                "The specified parameter {k} is not valid: given more than once"
            ))));
        }
    }
    let sreq = sign::Request {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        form: &req.form,
        headers: &req.headers,
        body: &req.body,
    };
    let verified = verifier
        .verify(&sreq, SystemTime::now())
        .map_err(|e| fail(ApiError::new(e.code(), e.http_status(), e.message())))?;
    let (action, version) = match verified.scheme {
        Scheme::V1 => (get("Action"), get("Version")),
        Scheme::V3 => (
            header(&req.headers, "x-acs-action"),
            header(&req.headers, "x-acs-version"),
        ),
    };
    let action = action.ok_or_else(|| fail(ApiError::missing("Action")))?;
    match version {
        None => return Err(fail(ApiError::missing("Version"))),
        Some(VERSION) => {}
        Some(_) => {
            return Err(fail(ApiError::invalid(format!(
                "The specified parameter Version is not valid: this server speaks {VERSION}"
            ))))
        }
    }
    if let Some(region) = get("RegionId") {
        if region != api.settings().region_id {
            return Err(fail(ApiError::new(
                "InvalidRegionId.NotFound",
                404,
                "Specified region does not exist.",
            )));
        }
    }
    let mut params = ParamMap::new();
    for (k, v) in all {
        if !COMMON.contains(&k.as_str()) {
            params.set_str(k, v);
        }
    }
    Ok(Call {
        action: action.to_string(),
        format,
        params,
    })
}

fn xml_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Objects become elements; a list repeats its element name per item (§1.5).
fn xml_value(name: &str, v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            for item in items {
                xml_value(name, item, out);
            }
        }
        Value::Object(m) => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            for (k, v) in m {
                xml_value(k, v, out);
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        scalar => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            match scalar {
                Value::String(s) => xml_escape(s, out),
                other => out.push_str(&other.to_string()),
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

fn render(format: Format, root: &str, body: Map<String, Value>) -> (String, &'static str) {
    match format {
        Format::Json => (Value::Object(body).to_string(), "application/json"),
        Format::Xml => {
            let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
            xml_value(root, &Value::Object(body), &mut s);
            (s, "application/xml")
        }
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

fn error_body(e: &ApiError, host: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("RequestId".into(), Value::String(request_id()));
    m.insert("HostId".into(), Value::String(host.to_string()));
    m.insert("Code".into(), Value::String(e.code.to_string()));
    m.insert("Message".into(), Value::String(e.message.clone()));
    m
}

async fn handle(
    api: Arc<Api>,
    verifier: Arc<Verifier>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("slb")
        .to_string();
    let reply = |status: u16, (text, ctype): (String, &'static str)| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    // Prometheus scrapes without signing; the metrics name backends but change nothing.
    if parts.method == hyper::Method::GET && parts.uri.path() == "/metrics" {
        return reply(
            200,
            (
                api.render_metrics(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
        );
    }
    let error = |e: ApiError, f: Format| {
        let status = e.status;
        reply(status, render(f, "Error", error_body(&e, &host)))
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                ApiError::invalid("The request body is larger than 16 MiB"),
                Format::Json,
            )
        }
    };
    let is_form = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed = (|| {
        let query = parse_pairs(parts.uri.query().unwrap_or("").as_bytes())?;
        let form = if is_form {
            parse_pairs(&body)?
        } else {
            Vec::new()
        };
        let mut headers = Vec::new();
        for (k, v) in &parts.headers {
            let v = v
                .to_str()
                .map_err(|_| bad_format("header values must be ASCII"))?;
            headers.push((k.as_str().to_string(), v.to_string()));
        }
        Ok::<_, ApiError>(RawRequest {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query,
            form,
            headers,
            body: body.clone(),
        })
    })();
    let incoming = match parsed {
        Ok(i) => i,
        Err(e) => return error(e, Format::Json),
    };
    let call = match prepare(&api, &verifier, &incoming) {
        Ok(c) => c,
        Err((e, f)) => return error(e, f),
    };
    let Call {
        action,
        format,
        params,
    } = call;
    let api2 = api.clone();
    let action2 = action.clone();
    // The store commits with an fsync: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || api2.call(&action2, params)).await;
    match result {
        Ok(Ok(mut body)) => {
            body.insert("RequestId".into(), Value::String(request_id()));
            reply(200, render(format, &format!("{action}Response"), body))
        }
        Ok(Err(e)) => error(e, format),
        Err(_) => error(ApiError::internal("The request processing has failed due to some unknown error, exception or failure."), format),
    }
}

/// Serves the API on `listener` until the task is dropped.
/// The API listener's TLS could not be set up from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("API TLS certificate {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: openssl::error::ErrorStack,
    },
    #[error("API TLS private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: openssl::error::ErrorStack,
    },
}

/// TLS for the API listener from a PEM certificate chain and its key (Mozilla's intermediate
/// profile: TLS 1.2 and 1.3).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<SslAcceptor, TlsError> {
    let cert_err = |source| TlsError::Certificate {
        path: cert.to_path_buf(),
        source,
    };
    let key_err = |source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    };
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(cert_err)?;
    b.set_certificate_chain_file(cert).map_err(cert_err)?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(key_err)?;
    b.check_private_key().map_err(key_err)?;
    Ok(b.build())
}

/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener`, over TLS when `tls` is given.
pub async fn serve(
    api: Arc<Api>,
    verifier: Arc<Verifier>,
    listener: TcpListener,
    tls: Option<SslAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("API accept: {e}");
                continue;
            }
        };
        let api = api.clone();
        let verifier = verifier.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(api, verifier, stream, peer).await;
            };
            let mut stream =
                match Ssl::new(acceptor.context()).and_then(|ssl| SslStream::new(ssl, stream)) {
                    Ok(s) => s,
                    Err(e) => return log::warn!("API TLS from {peer}: {e}"),
                };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept()).await {
                Ok(Ok(())) => serve_connection(api, verifier, stream, peer).await,
                Ok(Err(e)) => log::debug!("API TLS handshake from {peer}: {e}"),
                Err(_) => log::debug!("API TLS handshake from {peer}: timed out"),
            }
        });
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    api: Arc<Api>,
    verifier: Arc<Verifier>,
    stream: S,
    peer: SocketAddr,
) {
    let svc = service_fn(move |req| {
        let api = api.clone();
        let verifier = verifier.clone();
        async move { Ok::<_, Infallible>(handle(api, verifier, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        log::debug!("API connection from {peer}: {e}");
    }
}
