//! One probe of a backend (B8.3–B8.9, B8.13): a TCP connect, an HTTP request or a UDP
//! exchange, bounded by the check's effective timeout.
use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream, UdpSocket},
};

use super::{Check, ProbeKind};
use crate::config::{
    export::http_code_name, HealthCheckHttpVersion, HealthCheckMethod, HttpCodeClass,
};

/// Why a probe failed: the reason logged with a flip and shown in the metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no answer within {seconds} s")]
    Timeout { seconds: u16 },
    #[error("connection refused")]
    Refused,
    #[error("ICMP port unreachable")]
    PortUnreachable,
    #[error("{operation}: {kind}")]
    Io {
        operation: &'static str,
        kind: io::ErrorKind,
    },
    #[error("status {code} is not in {expected}")]
    Status { code: u16, expected: String },
    #[error("not an HTTP response: {start:?}")]
    NotHttp { start: String },
    #[error("reply {got:?} is not the expected {expected:?}")]
    Mismatch { got: String, expected: String },
}

/// The longest status line read from a backend; anything longer is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Runs one probe of `check`.
pub async fn run(check: &Check) -> Result<(), Failure> {
    let timeout = Duration::from_secs(check.timeout.into());
    let attempt = async {
        match &check.probe {
            ProbeKind::Tcp => tcp_connect(check.target).await.map(drop),
            ProbeKind::Http {
                host,
                uri,
                method,
                version,
                codes,
            } => http(check.target, host, uri, *method, *version, codes).await,
            ProbeKind::Udp {
                request,
                expect: Some(expect),
            } => udp_expect(check.target, request.as_deref(), expect).await,
            ProbeKind::Udp {
                request,
                expect: None,
            } => {
                // Silence passes (B8.13), so this probe waits for an ICMP error at most one
                // interval, which keeps it to one probe per interval (B8.8).
                let listen = Duration::from_secs(check.interval.into());
                udp_any(check.target, request.as_deref(), listen).await
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Timeout {
            seconds: check.timeout,
        }))
}

fn io_failure(operation: &'static str) -> impl Fn(io::Error) -> Failure {
    move |e| match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        kind => Failure::Io { operation, kind },
    }
}

async fn tcp_connect(target: SocketAddr) -> Result<TcpStream, Failure> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io_failure("socket"))?;
    // Closing with a reset leaves no TIME_WAIT behind: thousands of checks a second would
    // otherwise fill the checker's port range and the kernel's time-wait table.
    socket.set_zero_linger().map_err(io_failure("setsockopt"))?;
    // Delayed ACK from the start: the SYN-ACK is not acknowledged at once, so a check that
    // closes right after connecting answers it with the reset alone (SYN, SYN-ACK, RST) and
    // the backend never sees a connection to accept; an HTTP check's request carries the ACK.
    quickack_off(&socket).map_err(io_failure("setsockopt"))?;
    socket.connect(target).await.map_err(io_failure("connect"))
}

fn quickack_off(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let off: libc::c_int = 0;
    // SAFETY: setsockopt reads one c_int from `off`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::from_ref(&off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn http(
    target: SocketAddr,
    host: &str,
    uri: &str,
    method: HealthCheckMethod,
    version: HealthCheckHttpVersion,
    codes: &[HttpCodeClass],
) -> Result<(), Failure> {
    let mut stream = tcp_connect(target).await?;
    let method = match method {
        HealthCheckMethod::Head => "HEAD",
        HealthCheckMethod::Get => "GET",
    };
    let version = match version {
        HealthCheckHttpVersion::Http10 => "HTTP/1.0",
        HealthCheckHttpVersion::Http11 => "HTTP/1.1",
    };
    let request = format!(
        "{method} {uri} {version}\r\nHost: {host}\r\nUser-Agent: slb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_failure("send"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(io_failure("receive"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let code = status_code(line).ok_or_else(|| Failure::NotHttp {
        start: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
    })?;
    let class = match code / 100 {
        2 => Some(HttpCodeClass::Http2xx),
        3 => Some(HttpCodeClass::Http3xx),
        4 => Some(HttpCodeClass::Http4xx),
        5 => Some(HttpCodeClass::Http5xx),
        _ => None,
    };
    if class.is_some_and(|c| codes.contains(&c)) {
        Ok(())
    } else {
        Err(Failure::Status {
            code,
            expected: codes
                .iter()
                .map(|c| http_code_name(*c))
                .collect::<Vec<_>>()
                .join(","),
        })
    }
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (_, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit)
        || rest.get(3).is_some_and(|b| *b != b' ' && *b != b'\r')
    {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn udp_socket(target: SocketAddr, request: Option<&str>) -> Result<UdpSocket, Failure> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io_failure("bind"))?;
    // Connected, so an ICMP port unreachable comes back as an error on this socket.
    socket
        .connect(target)
        .await
        .map_err(io_failure("connect"))?;
    socket
        .send(request.unwrap_or_default().as_bytes())
        .await
        .map_err(udp_failure("send"))?;
    Ok(socket)
}

fn udp_failure(operation: &'static str) -> impl Fn(io::Error) -> Failure {
    move |e| match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::PortUnreachable,
        kind => Failure::Io { operation, kind },
    }
}

/// Passes only on a reply equal to `expect` (B8.13).
async fn udp_expect(
    target: SocketAddr,
    request: Option<&str>,
    expect: &str,
) -> Result<(), Failure> {
    let socket = udp_socket(target, request).await?;
    let mut buf = [0u8; 2048];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(udp_failure("receive"))?;
    if &buf[..n] == expect.as_bytes() {
        Ok(())
    } else {
        Err(Failure::Mismatch {
            got: String::from_utf8_lossy(&buf[..n.min(64)]).into_owned(),
            expected: expect.to_string(),
        })
    }
}

/// Fails only on an ICMP port unreachable within `listen`; a reply or silence passes (B8.13).
async fn udp_any(
    target: SocketAddr,
    request: Option<&str>,
    listen: Duration,
) -> Result<(), Failure> {
    let socket = udp_socket(target, request).await?;
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(listen, socket.recv(&mut buf)).await {
        Ok(Err(e)) => Err(udp_failure("receive")(e)),
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::status_code;

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 302 Found"), Some(302));
        assert_eq!(status_code(b"HTTP/1.1 404\r"), Some(404));
        assert_eq!(status_code(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(status_code(b"HTTP/2 200"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(status_code(b""), None);
    }
}
