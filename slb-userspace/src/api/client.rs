//! A signed API client (signature 1.0, JSON): what `slb call` and the tests use.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::SystemTime;

use openssl::ssl::{SslConnector, SslMethod};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::sign;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("building the request: {source}")]
    Request { source: hyper::http::Error },
    #[error("the response is not JSON: {body}")]
    NotJson { body: String },
    #[error("TLS setup: {source}")]
    TlsSetup { source: openssl::error::ErrorStack },
    #[error("TLS handshake with {addr}: {source}")]
    TlsHandshake {
        addr: SocketAddr,
        source: openssl::ssl::Error,
    },
}

/// A TLS client that trusts the certificates in `ca_file` (PEM) and checks that the server's
/// certificate names the address it is called at.
pub fn tls_connector(ca_file: &Path) -> Result<SslConnector, ClientError> {
    let setup = |source| ClientError::TlsSetup { source };
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    b.set_ca_file(ca_file).map_err(setup)?;
    Ok(b.build())
}

/// Where and as whom to call.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub key_id: String,
    pub secret: String,
    /// `Some`: the API is served over TLS.
    pub tls: Option<SslConnector>,
}

impl Client {
    /// Calls `action` with `params` (common parameters are added here); returns the HTTP
    /// status and the JSON body.
    pub async fn call(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        self.call_as("GET", action, params).await
    }

    /// As [`Client::call`], with the parameters in a POST form body (no URI length limit).
    pub async fn call_form(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        self.call_as("POST", action, params).await
    }

    async fn call_as(
        &self,
        method: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        let mut all: Vec<(String, String)> = vec![
            ("Action".into(), action.into()),
            ("Version".into(), super::VERSION.into()),
            ("Format".into(), "JSON".into()),
        ];
        all.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let nonce = uuid::Uuid::new_v4().to_string();
        let ts = sign::format_timestamp(SystemTime::now());
        sign::sign_v1(method, &mut all, &self.key_id, &self.secret, &nonce, &ts);
        let encoded = all
            .iter()
            .map(|(k, v)| format!("{}={}", sign::percent_encode(k), sign::percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        if method == "GET" {
            self.send("GET", &format!("/?{encoded}"), Vec::new(), Bytes::new())
                .await
        } else {
            let form = vec![(
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            )];
            self.send(method, "/", form, Bytes::from(encoded)).await
        }
    }

    /// Sends one raw request (the malformed-input tests build their own).
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<(u16, Value), ClientError> {
        let addr = self.addr;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let Some(connector) = &self.tls else {
            return exchange(stream, addr, method, path_and_query, headers, body).await;
        };
        let setup = |source| ClientError::TlsSetup { source };
        let ssl = connector
            .configure()
            .and_then(|c| c.into_ssl(&addr.ip().to_string()))
            .map_err(setup)?;
        let mut tls = SslStream::new(ssl, stream).map_err(setup)?;
        Pin::new(&mut tls)
            .connect()
            .await
            .map_err(|source| ClientError::TlsHandshake { addr, source })?;
        exchange(tls, addr, method, path_and_query, headers, body).await
    }
}

/// One HTTP/1.1 request and its JSON response over `stream`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Result<(u16, Value), ClientError> {
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http { addr, source })?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string());
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(body))
        .map_err(|source| ClientError::Request { source })?;
    let resp = tx
        .send_request(req)
        .await
        .map_err(|source| ClientError::Http { addr, source })?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Http { addr, source })?
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).map_err(|_| ClientError::NotJson {
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })?;
    Ok((status, body))
}
