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

    /// A connection kept open across calls (HTTP keep-alive), as SDK clients pool them.
    pub fn session(&self) -> Session<'_> {
        Session {
            client: self,
            sender: None,
        }
    }

    async fn call_as(
        &self,
        method: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        let (path, headers, body) = self.signed(method, action, params);
        self.send(method, &path, headers, body).await
    }

    /// The signed request: path and query, headers, body.
    fn signed(
        &self,
        method: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> (String, Vec<(String, String)>, Bytes) {
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
            (format!("/?{encoded}"), Vec::new(), Bytes::new())
        } else {
            let form = vec![(
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            )];
            ("/".to_string(), form, Bytes::from(encoded))
        }
    }

    /// Sends one raw request on a new connection (the malformed-input tests build their own).
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<(u16, Value), ClientError> {
        let mut sender = self.connect().await?;
        request(
            &mut sender,
            self.addr,
            method,
            path_and_query,
            headers,
            body,
        )
        .await
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let addr = self.addr;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let Some(connector) = &self.tls else {
            return handshake(stream, addr).await;
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
        handshake(tls, addr).await
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Calls over one kept-alive connection, reopened when the server closed it.
pub struct Session<'c> {
    client: &'c Client,
    sender: Option<Sender>,
}

impl Session<'_> {
    /// As [`Client::call`].
    pub async fn call(
        &mut self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), ClientError> {
        let (path, headers, body) = self.client.signed("GET", action, params);
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.client.connect().await?,
        };
        let r = request(&mut sender, self.client.addr, "GET", &path, headers, body).await;
        if r.is_ok() {
            self.sender = Some(sender);
        }
        r
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    addr: SocketAddr,
) -> Result<Sender, ClientError> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http { addr, source })?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One HTTP/1.1 request and its JSON response.
async fn request(
    sender: &mut Sender,
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Result<(u16, Value), ClientError> {
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
    sender
        .ready()
        .await
        .map_err(|source| ClientError::Http { addr, source })?;
    let resp = sender
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
