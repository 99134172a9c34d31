//! An HTTP backend for tests, running on threads in a network namespace, whose answers a test
//! can change while it runs. It answers `<code> Test` with `X-Backend: <name>` and, except to
//! HEAD, the request's head as the body; it records each request's head, and counts the requests
//! whose connection was closed before their answer was due. A WebSocket upgrade
//! request is switched (`101`) and each text frame then echoed.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use xtask::lab::in_netns;

const POLL: Duration = Duration::from_millis(20);

/// How an [`HttpBackend`] answers: a status code after a delay, or never (`hang`).
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub code: u16,
    pub delay: Duration,
    pub hang: bool,
    /// Sent as `Content-Type` when not empty.
    pub content_type: &'static str,
}

pub struct HttpBackend {
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment or push.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HttpBackend {
    pub fn spawn(
        ns: &str,
        bind: SocketAddr,
        name: &str,
        code: u16,
        delay: Duration,
    ) -> anyhow::Result<HttpBackend> {
        let listener = in_netns(ns, move || TcpListener::bind(bind))??;
        listener.set_nonblocking(true)?;
        let behaviour = Arc::new(Mutex::new(Behaviour {
            code,
            delay,
            hang: false,
            content_type: "",
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (behaviour, requests, abandoned, stop) = (
                behaviour.clone(),
                requests.clone(),
                abandoned.clone(),
                stop.clone(),
            );
            let name = name.to_string();
            thread::spawn(move || {
                let mut connections: Vec<JoinHandle<()>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    connections.retain(|c| !c.is_finished());
                    let Ok((stream, _)) = listener.accept() else {
                        thread::sleep(POLL);
                        continue;
                    };
                    let state = Shared {
                        behaviour: behaviour.clone(),
                        requests: requests.clone(),
                        abandoned: abandoned.clone(),
                        stop: stop.clone(),
                    };
                    let name = name.clone();
                    connections.push(thread::spawn(move || serve(stream, &name, &state)));
                }
                // Joined so that, once dropped, nothing of the backend is left listening or
                // answering.
                for c in connections {
                    let _ = c.join();
                }
            })
        };
        Ok(HttpBackend {
            behaviour,
            requests,
            abandoned,
            stop,
            thread: Some(thread),
        })
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut lock(&self.behaviour));
    }

    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }

    /// Requests whose connection the client closed before their answer was due.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Relaxed)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a connection's thread shares with the backend.
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Answers the requests of one connection, keeping it open while the client does.
fn serve(mut stream: TcpStream, name: &str, state: &Shared) {
    let Shared {
        behaviour,
        requests,
        abandoned,
        stop,
    } = state;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
        pending.drain(..end + 4);
        lock(requests).push(head.clone());
        let started = Instant::now();
        let b = loop {
            let b = lock(behaviour).clone();
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if !b.hang && started.elapsed() >= b.delay {
                break b;
            }
            thread::sleep(POLL);
        };
        let _ = stream.set_nonblocking(true);
        let closed = matches!(stream.peek(&mut [0u8; 1]), Ok(0));
        let _ = stream.set_nonblocking(false);
        if closed {
            abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if head
            .to_ascii_lowercase()
            .contains("\r\nupgrade: websocket\r\n")
        {
            return websocket_echo(stream, &head, name);
        }
        let is_head = head.starts_with("HEAD ");
        let close = head.to_ascii_lowercase().contains("\r\nconnection: close")
            || head.contains(" HTTP/1.0\r\n");
        let content_type = match b.content_type {
            "" => String::new(),
            t => format!("Content-Type: {t}\r\n"),
        };
        let mut out = format!(
            "HTTP/1.1 {} Test\r\nX-Backend: {name}\r\n{content_type}Content-Length: {}\r\n{}\r\n",
            b.code,
            head.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if !is_head {
            out.extend_from_slice(head.as_bytes());
        }
        if stream.write_all(&out).is_err() || close {
            return;
        }
    }
}

/// RFC 6455 §4.2.2: the accept value for a client's key.
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC11B65"));
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Switches protocols and echoes short text frames (unmasked, prefixed with the backend's
/// name) until the client closes.
fn websocket_echo(mut stream: TcpStream, head: &str, name: &str) {
    let Some(key) = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    }) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        websocket_accept(&key)
    );
    if stream.write_all(answer.as_bytes()).is_err() {
        return;
    }
    loop {
        let mut hdr = [0u8; 6];
        if stream.read_exact(&mut hdr).is_err() {
            return;
        }
        // Client frames are masked; short payloads only (a test's).
        let len = usize::from(hdr[1] & 0x7f);
        if len >= 126 || hdr[0] & 0x0f == 0x8 {
            return;
        }
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= hdr[2 + i % 4];
        }
        let mut reply = format!("{name}:").into_bytes();
        reply.extend_from_slice(&payload);
        if reply.len() >= 126 {
            return;
        }
        let mut frame = vec![0x81, reply.len() as u8];
        frame.extend_from_slice(&reply);
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}
