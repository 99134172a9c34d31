//! Connections to backends. A backend connection that finished its exchange and can take another
//! request waits in a small idle pool for the next request to that backend, from any client, so
//! most requests skip the TCP handshake, as nginx's `keepalive` and HAProxy's connection reuse do.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hyper::{body::Incoming, client::conn::http1, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The TCP handshake to a backend gives up after this and tries the next backend (B9.10).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per backend.
const MAX_IDLE: usize = 64;
/// Below the shortest keep-alive timeout common backends use (Apache's 5 s; nginx's is 75 s), so
/// the pool rarely hands out a connection the backend is just closing.
const IDLE_LIFETIME: Duration = Duration::from_secs(4);

type Sender = http1::SendRequest<Incoming>;

/// A backend connection ready for one request.
pub enum Conn {
    /// Reused from the idle pool; the backend may have closed it just now.
    Pooled(Sender),
    Fresh(TcpStream),
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
    idle: Mutex<HashMap<SocketAddr, Vec<(Sender, Instant)>>>,
}

impl Backends {
    /// An idle connection to `addr`, if one is still open.
    pub fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some((sender, since)) = list.pop() {
            if since.elapsed() < IDLE_LIFETIME && sender.is_ready() {
                return Some(Conn::Pooled(sender));
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE {
            list.retain(|(s, since)| now - *since < IDLE_LIFETIME && !s.is_closed());
        }
        if list.len() < MAX_IDLE {
            list.push((sender, now));
        }
    }

    /// Sends `req` and waits for the response head for at most `timeout`. `upgrade`: the
    /// connection is handed over to the protocol the request upgrades to (WebSocket), so it is
    /// neither taken from nor returned to the pool.
    pub async fn exchange(
        self: Arc<Self>,
        addr: SocketAddr,
        conn: Conn,
        req: Request<Incoming>,
        timeout: Duration,
        upgrade: bool,
    ) -> Result<Response<Incoming>, Failure> {
        let work = async {
            let (mut sender, pooled) = match conn {
                Conn::Pooled(s) => (s, true),
                Conn::Fresh(stream) => (handshake(addr, stream, upgrade).await?, false),
            };
            let resp = match sender.try_send_request(req).await {
                Ok(resp) => resp,
                Err(mut e) => match (pooled, e.take_message()) {
                    // The pooled connection closed before the request went out: a new one.
                    (true, Some(req)) => {
                        let stream = connect(addr).await.map_err(|_| Failure::Exchange)?;
                        sender = handshake(addr, stream, false).await?;
                        sender.send_request(req).await.map_err(|e| {
                            log::debug!("backend {addr}: {e}");
                            Failure::Exchange
                        })?
                    }
                    _ => {
                        log::debug!("backend {addr}: {}", e.error());
                        return Err(Failure::Exchange);
                    }
                },
            };
            if upgrade {
                return Ok(resp);
            }
            if sender.is_ready() {
                // A small body was read along with the head: the connection is free already.
                self.put(addr, sender);
            } else {
                // Ready again once the response body has been read to its end.
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        self.put(addr, sender);
                    }
                });
            }
            Ok(resp)
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// Connects within [`CONNECT_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn handshake(addr: SocketAddr, stream: TcpStream, upgrade: bool) -> Result<Sender, Failure> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Exchange)?;
    tokio::spawn(async move {
        let r = if upgrade {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = r {
            log::debug!("backend connection {addr}: {e}");
        }
    });
    Ok(sender)
}
