//! HTTPS listeners and the rest of the layer-7 features, end to end (slb-behaviour.md §6, §9–§11):
//! real clients (curl, the openssl CLI, a WebSocket handshake over TCP) in the client namespace,
//! the real `slb serve` in the LB namespace, HTTP backends in backend namespaces, certificates
//! made with the openssl CLI and named in the configuration file.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tests::{
    api::{openssl, LabAgent},
    http_backend::{websocket_accept, HttpBackend},
};
use xtask::lab::{in_netns, Lab};

/// A CA, leaf certificates it signs (CN = name, SAN = the DNS names), client certificates, and
/// a foreign CA with a client certificate of its own.
fn certificates(dir: &Path) {
    let ca = |name: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        )
    };
    ca("ca");
    ca("foreign-ca");
    let leaf = |name: &str, ca: &str, ext: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    };
    leaf("app", "ca", "subjectAltName=DNS:app.example\n");
    leaf("app-renewed", "ca", "subjectAltName=DNS:app.example\n");
    leaf("www", "ca", "subjectAltName=DNS:www.example.com\n");
    leaf("wild", "ca", "subjectAltName=DNS:*.example.com\n");
    leaf("market", "ca", "subjectAltName=DNS:*.market.example.com\n");
    leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
    leaf("stranger", "foreign-ca", "extendedKeyUsage=clientAuth\n");
}

/// `curl ARGS` in `ns`, in `dir` (certificate files), trusting the test CA; the output whatever
/// the exit status.
fn curl(ns: &str, dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
        .args(["--cacert", "ca.pem"])
        .args(args)
        .current_dir(dir)
        .output()?)
}

/// Successful curl: its stdout.
fn curl_ok(ns: &str, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = curl(ns, dir, args)?;
    if !out.status.success() {
        bail!(
            "curl {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The subject CN of the certificate a verbose curl reports the server sent.
fn served_cn(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().find(|l| l.contains(" subject: "))?;
    let cn = line.split("CN=").nth(1)?;
    Some(cn.split([',', '/']).next()?.trim().to_string())
}

#[test]
fn https_listeners_and_request_features() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let lab = Lab::up("slbtls", 73, 2)?;
    let backend_addr = |i: usize| SocketAddr::new(IpAddr::V4(lab.backends()[i].v4), 8080);
    let mut backends = Vec::new();
    for (i, b) in lab.backends().iter().enumerate() {
        let name = format!("b{}", i + 1);
        backends.push(HttpBackend::spawn(
            &b.ns,
            backend_addr(i),
            &name,
            200,
            Duration::ZERO,
        )?);
    }
    let agent = LabAgent::new(&lab, "https")?;
    certificates(&agent.dir);
    let vip = lab.vip_v4();
    let (b1, b2) = (lab.backends()[0].v4, lab.backends()[1].v4);
    let common = "BackendServerPort = 8080\nHealthCheck = \"off\"\nScheduler = \"rr\"\n";
    let serve = agent.start(&format!(
        r#"
[[ServerCertificates]]
ServerCertificateId = "cert-app"
ServerCertificate = "app.pem"
PrivateKey = "app.key"
[[ServerCertificates]]
ServerCertificateId = "cert-www"
ServerCertificate = "www.pem"
PrivateKey = "www.key"
[[ServerCertificates]]
ServerCertificateId = "cert-wild"
ServerCertificate = "wild.pem"
PrivateKey = "wild.key"
[[ServerCertificates]]
ServerCertificateId = "cert-market"
ServerCertificate = "market.pem"
PrivateKey = "market.key"
[[CACertificates]]
CACertificateId = "ca-clients"
CACertificate = "ca.pem"

[[LoadBalancers]]
LoadBalancerId = "lb-tls"
Address = "{vip}"
BackendServers = [ {{ ServerId = "{b1}" }}, {{ ServerId = "{b2}" }} ]
VServerGroups = [ {{ VServerGroupId = "rsp-api", BackendServers = [ {{ ServerId = "{b2}", Port = 8080 }} ] }} ]

[[LoadBalancers.Listeners]]
ListenerProtocol = "https"
ListenerPort = 443
{common}ServerCertificateId = "cert-app"
TLSCipherPolicy = "tls_cipher_policy_1_2"
StickySession = "on"
StickySessionType = "insert"
CookieTimeout = 600
DomainExtensions = [
  {{ DomainExtensionId = "de-www", Domain = "www.example.com", ServerCertificateId = "cert-www" }},
  {{ DomainExtensionId = "de-wild", Domain = "*.example.com", ServerCertificateId = "cert-wild" }},
  {{ DomainExtensionId = "de-market", Domain = "*.market.example.com", ServerCertificateId = "cert-market" }},
]
Rules = [ {{ RuleId = "rule-api", RuleName = "api", Url = "/api", VServerGroupId = "rsp-api" }} ]

[[LoadBalancers.Listeners]]
ListenerProtocol = "https"
ListenerPort = 8443
{common}ServerCertificateId = "cert-app"
TLSCipherPolicy = "tls_cipher_policy_1_2_strict_with_1_3"
CACertificateId = "ca-clients"
EnableHttp2 = "off"
StickySession = "off"

[[LoadBalancers.Listeners]]
ListenerProtocol = "https"
ListenerPort = 9443
{common}ServerCertificateId = "cert-app"
StickySession = "off"
IdleTimeout = 2

[[LoadBalancers.Listeners]]
ListenerProtocol = "http"
ListenerPort = 80
{common}StickySession = "off"
ListenerForward = "on"
ForwardPort = 443

[[LoadBalancers.Listeners]]
ListenerProtocol = "http"
ListenerPort = 81
{common}StickySession = "off"
"#
    ))?;
    let ns = lab.client().ns.clone();
    let dir = agent.dir.clone();
    let resolve = |host: &str, port: u16| format!("{host}:{port}:{vip}");
    let app = resolve("app.example", 443);

    // B10.14–B10.16: the certificate follows the SNI name; no match → the listener's own.
    for (host, cn) in [
        ("www.example.com", "www"),
        ("shop.example.com", "wild"),
        ("info.market.example.com", "market"),
        ("app.example", "app"),
    ] {
        let out = curl(
            &ns,
            &dir,
            &[
                "-v",
                "--resolve",
                &resolve(host, 443),
                "-o",
                "/dev/null",
                &format!("https://{host}/"),
            ],
        )?;
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(served_cn(&out.stderr).as_deref(), Some(cn), "{host}");
    }

    // B10.10: tls_cipher_policy_1_2 takes TLS 1.2 only; B9.17: HTTP/2 by ALPN (EnableHttp2
    // defaults to on).
    let version = |args: &[&str]| -> anyhow::Result<bool> {
        let mut all = vec!["--resolve", &app, "-o", "/dev/null"];
        all.extend_from_slice(args);
        all.push("https://app.example/");
        Ok(curl(&ns, &dir, &all)?.status.success())
    };
    let low = "DEFAULT:@SECLEVEL=0";
    assert!(
        !version(&["--tlsv1.0", "--tls-max", "1.0", "--ciphers", low])?,
        "B10.10 TLS 1.0"
    );
    assert!(
        !version(&["--tlsv1.1", "--tls-max", "1.1", "--ciphers", low])?,
        "B10.10 TLS 1.1"
    );
    assert!(
        version(&["--tlsv1.2", "--tls-max", "1.2"])?,
        "B10.10 TLS 1.2"
    );
    assert!(!version(&["--tlsv1.3"])?, "B10.10 TLS 1.3");
    // B10.11: a suite of the policy, and one outside it.
    assert!(version(&[
        "--tls-max",
        "1.2",
        "--ciphers",
        "AES128-SHA:@SECLEVEL=0"
    ])?);
    assert!(!version(&[
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-RSA-CHACHA20-POLY1305"
    ])?);
    let h = curl_ok(
        &ns,
        &dir,
        &[
            "--resolve",
            &app,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "https://app.example/",
        ],
    )?;
    assert_eq!(h, "2", "B9.17 HTTP/2");

    // B6.3, B6.7: without cookies requests alternate; with the SERVERID cookie 100 requests
    // stay on one backend. One curl run reuses its connection and cookie jar.
    let urls: Vec<String> = (0..100)
        .map(|i| format!("https://app.example/s{i}"))
        .collect();
    let run = |jar: bool| -> anyhow::Result<Vec<String>> {
        let mut args = vec!["--resolve", &app, "-w", "%header{x-backend}\n"];
        if jar {
            args.extend_from_slice(&["-c", "jar.txt", "-b", "jar.txt"]);
        }
        for url in &urls {
            args.extend_from_slice(&["-o", "/dev/null", url]);
        }
        Ok(curl_ok(&ns, &dir, &args)?
            .lines()
            .map(str::to_string)
            .collect())
    };
    let free = run(false)?;
    assert!(
        free.iter().any(|b| b == "b1") && free.iter().any(|b| b == "b2"),
        "{free:?}"
    );
    let pinned = run(true)?;
    assert_eq!(pinned.len(), 100);
    assert!(pinned.iter().all(|b| b == &pinned[0]), "B6.3: {pinned:?}");
    let jar = std::fs::read_to_string(dir.join("jar.txt"))?;
    assert!(jar.contains("SERVERID"), "{jar}");
    assert!(
        !jar.contains(&b1.to_string()) && !jar.contains(&b2.to_string()),
        "opaque: {jar}"
    );
    // B6.8: a cookie naming no usable backend (gone, or never one) is served as if absent and
    // replaced by a cookie for the backend that answered.
    let head = curl_ok(
        &ns,
        &dir,
        &[
            "--resolve",
            &app,
            "-b",
            "SERVERID=00000000deadbeef",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "https://app.example/gone",
        ],
    )?;
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let set = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: serverid="))
        .with_context(|| format!("B6.8: a new cookie in {head}"))?;
    let token = set["set-cookie: serverid=".len()..]
        .split(';')
        .next()
        .unwrap_or_default();
    assert!(
        token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{set}"
    );
    assert_ne!(token, "00000000deadbeef", "{set}");
    // B6.6: no cookie on a 4xx answer.
    for b in &backends {
        b.set(|b| b.code = 404);
    }
    let head = curl_ok(
        &ns,
        &dir,
        &[
            "--resolve",
            &app,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "https://app.example/missing",
        ],
    )?;
    assert!(head.starts_with("HTTP/2 404"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("set-cookie"),
        "B6.6: {head}"
    );
    for b in &backends {
        b.set(|b| b.code = 200);
    }

    // B11.3/B11.4: /api goes to the rule's group (b2 only), the rest to the listener's.
    for i in 0..4 {
        let b = curl_ok(
            &ns,
            &dir,
            &[
                "--resolve",
                &app,
                "-w",
                "%header{x-backend}",
                "-o",
                "/dev/null",
                &format!("https://app.example/api/v{i}"),
            ],
        )?;
        assert_eq!(b, "b2", "B11.3");
    }

    // B9.16: text/plain is compressed for a client that accepts gzip, not for one that does not.
    for b in &backends {
        b.set(|b| b.content_type = "text/plain");
    }
    let enc = |extra: &[&str]| -> anyhow::Result<String> {
        let mut args = vec![
            "--resolve",
            &app,
            "-w",
            "%header{content-encoding}",
            "-o",
            "/dev/null",
        ];
        args.extend_from_slice(extra);
        args.push("https://app.example/text");
        curl_ok(&ns, &dir, &args)
    };
    assert_eq!(enc(&["--compressed"])?, "gzip", "B9.16");
    assert_eq!(enc(&[])?, "", "B9.16 without Accept-Encoding");

    // B10.8/B10.9: port 8443 wants a client certificate from ca-clients; B10.10 strict_with_1_3
    // takes TLS 1.3 (its CCM suite too); EnableHttp2=off keeps HTTP/1.1.
    let mtls = resolve("app.example", 8443);
    let client = |extra: &[&str]| -> anyhow::Result<Output> {
        let mut args = vec![
            "--resolve",
            &mtls,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ];
        args.extend_from_slice(extra);
        args.push("https://app.example:8443/");
        curl(&ns, &dir, &args)
    };
    let good = client(&["--cert", "client.pem", "--key", "client.key"])?;
    assert_eq!(
        String::from_utf8_lossy(&good.stdout),
        "1.1 200",
        "B10.9 good client"
    );
    let ccm = client(&[
        "--cert",
        "client.pem",
        "--key",
        "client.key",
        "--tlsv1.3",
        "--tls13-ciphers",
        "TLS_AES_128_CCM_SHA256",
    ])?;
    assert_eq!(
        String::from_utf8_lossy(&ccm.stdout),
        "1.1 200",
        "B10.11 CCM"
    );
    assert!(
        !client(&["--cert", "stranger.pem", "--key", "stranger.key"])?
            .status
            .success(),
        "B10.9 foreign client certificate"
    );
    assert!(
        !client(&[])?.status.success(),
        "B10.9 no client certificate"
    );

    // B9.19/B9.20: port 80 redirects to the HTTPS listener.
    let r = curl_ok(
        &ns,
        &dir,
        &[
            "--resolve",
            &resolve("app.example", 80),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "http://app.example/a/b?c=1",
        ],
    )?;
    assert_eq!(r, "301 https://app.example/a/b?c=1");

    // B9.18: a WebSocket upgrade through the HTTP listener, then frames both ways; the same
    // through the HTTPS listener over HTTP/1.1 (WebSocket Secure, no ALPN offered).
    let ws = SocketAddr::new(IpAddr::V4(vip), 81);
    in_netns(&ns, move || -> anyhow::Result<()> {
        let mut s = TcpStream::connect_timeout(&ws, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        websocket_echo(&mut s)
    })??;
    let wss = SocketAddr::new(IpAddr::V4(vip), 443);
    in_netns(&ns, move || {
        websocket_echo(&mut Http1Tls::connect(wss)?.stream)
    })??;

    // B9.18 over HTTP/2: an extended CONNECT (RFC 8441) becomes the backend's HTTP/1.1 upgrade.
    in_netns(&ns, move || websocket_over_http2(wss))??;

    // B9.7 over HTTP/2: an idle connection gets GOAWAY and is closed after IdleTimeout (2 s,
    // checked every 0.5 s; ±2 s as over HTTP/1.1).
    let h2 = SocketAddr::new(IpAddr::V4(vip), 9443);
    let waited = in_netns(&ns, move || http2_idle_close(h2))??;
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(4),
        "closed after {waited:?}"
    );

    // Certificate replacement: a reload points cert-app at a renewed certificate. New
    // handshakes get it; a connection made before goes on with its requests.
    let tls443 = SocketAddr::new(IpAddr::V4(vip), 443);
    // Two requests written as two TLS records back to back: the agent's OpenSSL reads ahead, so
    // both records may come in one read, and the second request is then served from OpenSSL's
    // buffer with nothing more arriving on the socket.
    let mut pipelined = in_netns(&ns, move || Http1Tls::connect(tls443))??;
    pipelined
        .stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: app.example\r\n\r\n")?;
    pipelined
        .stream
        .write_all(b"GET /two HTTP/1.1\r\nHost: app.example\r\n\r\n")?;
    for _ in 0..2 {
        let head = pipelined.response()?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let mut before = in_netns(&ns, move || Http1Tls::connect(tls443))??;
    assert_eq!(before.cn, "app");
    assert!(before.get()?.starts_with("HTTP/1.1 200"));
    let config = agent.dir.join("slb.toml");
    let text = std::fs::read_to_string(&config)?
        .replace("\"app.pem\"", "\"app-renewed.pem\"")
        .replace("\"app.key\"", "\"app-renewed.key\"");
    std::fs::write(&config, text)?;
    // SAFETY: plain signal to the agent (nsenter executed it in place, same pid).
    let pid = i32::try_from(serve.0.id())?;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cn = in_netns(&ns, move || Http1Tls::connect(tls443).map(|c| c.cn))??;
        if cn == "app-renewed" {
            break;
        }
        assert!(Instant::now() < deadline, "still {cn} after the reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        let head = before.get()?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }

    drop(serve);
    // The lab's VIP is an address on lo: stopping the agent leaves its kernel route alone.
    let route = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.lb_ns(),
            "ip",
            "-4",
            "route",
            "show",
            "table",
            "local",
        ])
        .args(["exact", &vip.to_string()])
        .output()?;
    assert!(
        !route.stdout.is_empty(),
        "the VIP's local route is gone after the agent stopped"
    );
    drop(agent);
    drop(backends);
    lab.down()?;
    Ok(())
}

/// B10.1, B10.4, B10.17: `[[ServerCertificates]]` / `[[CACertificates]]` name PEM files next to
/// the configuration; unreadable files, unknown certificate IDs and an extension domain its
/// certificate does not serve are rejected at the field, and text without a file refuses them.
/// An HTTP/1.x response head, up to and including the blank line, read byte by byte so that
/// nothing after it is consumed.
fn read_head(stream: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A client's WebSocket text frame (masked, as RFC 6455 requires; payload under 126 bytes).
fn masked_text_frame(msg: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | msg.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A TLS connection speaking HTTP/1.1 (no ALPN offered), with the server certificate's CN.
struct Http1Tls {
    stream: ::openssl::ssl::SslStream<TcpStream>,
    cn: String,
}

impl Http1Tls {
    fn connect(addr: SocketAddr) -> anyhow::Result<Http1Tls> {
        use ::openssl::{
            nid::Nid,
            ssl::{SslConnector, SslMethod, SslVerifyMode},
        };
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_verify(SslVerifyMode::NONE);
        let stream = b.build().connect("app.example", tcp)?;
        let cert = stream
            .ssl()
            .peer_certificate()
            .context("no server certificate")?;
        let cn = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .context("no CN")?
            .data()
            .as_slice()
            .to_vec();
        let cn = String::from_utf8(cn).context("CN")?;
        Ok(Http1Tls { stream, cn })
    }

    /// One keep-alive request; the response head (the body is read and dropped).
    fn get(&mut self) -> anyhow::Result<String> {
        write!(self.stream, "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")?;
        self.response()
    }

    /// The next response's head; its body is read and dropped.
    fn response(&mut self) -> anyhow::Result<String> {
        let head = read_head(&mut self.stream)?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .context("no Content-Length")?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(head)
    }
}

/// A WebSocket upgrade on an HTTP/1.1 connection, then two frames through the backend's echo.
fn websocket_echo(s: &mut (impl Read + Write)) -> anyhow::Result<()> {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(s, "GET /chat HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")?;
    let head = read_head(s)?.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&websocket_accept(key).to_ascii_lowercase()),
        "{head}"
    );
    for msg in ["hello", "again"] {
        s.write_all(&masked_text_frame(msg))?;
        let mut hdr = [0u8; 2];
        s.read_exact(&mut hdr)?;
        let mut payload = vec![0u8; usize::from(hdr[1])];
        s.read_exact(&mut payload)?;
        let text = String::from_utf8(payload).context("text frame")?;
        assert!(text.ends_with(&format!(":{msg}")), "{text}");
    }
    Ok(())
}

/// A TLS connection to `addr` that negotiated HTTP/2 by ALPN.
async fn h2_tls(
    addr: SocketAddr,
) -> anyhow::Result<tokio_openssl::SslStream<tokio::net::TcpStream>> {
    use ::openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x02h2")?;
    let ssl = b.build().configure()?.into_ssl("app.example")?;
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp)?;
    std::pin::Pin::new(&mut tls).connect().await?;
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    Ok(tls)
}

/// One request on an HTTP/2 connection to `addr`, then nothing: how long after the answer the
/// server closed the connection.
fn http2_idle_close(addr: SocketAddr) -> anyhow::Result<Duration> {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::{Request, StatusCode};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(h2_tls(addr).await?),
        )
        .await?;
        let closed = tokio::spawn(conn);
        let get = Request::get("https://app.example/").body(Empty::<Bytes>::new())?;
        assert_eq!(sender.send_request(get).await?.status(), StatusCode::OK);
        let idle = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .context("the idle HTTP/2 connection stayed open for 10 s")???;
        anyhow::Ok(idle.elapsed())
    })
}

/// A WebSocket opened with an HTTP/2 extended CONNECT on `addr` (TLS, ALPN h2), then frames
/// both ways through the backend's echo.
fn websocket_over_http2(addr: SocketAddr) -> anyhow::Result<()> {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::{ext::Protocol, Method, Request, StatusCode};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tls = h2_tls(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        // A plain request first: its answer comes after the server's SETTINGS, which must
        // have enabled the extended CONNECT before one can be sent.
        let get = Request::get("https://app.example/").body(Empty::<Bytes>::new())?;
        assert_eq!(sender.send_request(get).await?.status(), StatusCode::OK);
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri("https://app.example/chat")
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())?;
        req.extensions_mut()
            .insert(Protocol::from_static("websocket"));
        let resp = sender.send_request(req).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
        let mut io = TokioIo::new(hyper::upgrade::on(resp).await?);
        for msg in ["over", "h2"] {
            io.write_all(&masked_text_frame(msg)).await?;
            let mut hdr = [0u8; 2];
            io.read_exact(&mut hdr).await?;
            let mut payload = vec![0u8; usize::from(hdr[1])];
            io.read_exact(&mut payload).await?;
            let text = String::from_utf8(payload).context("text frame")?;
            assert!(text.ends_with(&format!(":{msg}")), "{text}");
        }
        anyhow::Ok(())
    })
}

#[test]
fn certificate_sections_are_validated() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("slb-certsections-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    certificates(&dir);
    let config = |listener_extra: &str, sections: &str| {
        format!(
            "{sections}\n[[LoadBalancers]]\nLoadBalancerId = \"lb-1\"\nAddress = \"10.0.0.1\"\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"https\"\nListenerPort = 443\n\
             BackendServerPort = 80\nStickySession = \"off\"\nHealthCheck = \"off\"\n{listener_extra}"
        )
    };
    let app = "[[ServerCertificates]]\nServerCertificateId = \"cert-app\"\nServerCertificate = \"app.pem\"\nPrivateKey = \"app.key\"\n\
               [[CACertificates]]\nCACertificateId = \"ca-1\"\nCACertificate = \"ca.pem\"\n";
    let load = |text: String| {
        let path = dir.join("slb.toml");
        std::fs::write(&path, text).expect("config file");
        slb::config::load(&path)
    };
    let paths = |r: Result<slb::config::Config, slb::config::ConfigError>| -> Vec<String> {
        match r {
            Err(slb::config::ConfigError::Invalid { errors }) => {
                errors.into_iter().map(|e| e.issue.path).collect()
            }
            other => panic!("expected field errors, got {other:?}"),
        }
    };
    let ok = load(config(
        "ServerCertificateId = \"cert-app\"\nCACertificateId = \"ca-1\"\n",
        app,
    ))?;
    assert!(ok.certificates.server.contains_key("cert-app"));
    assert!(ok.certificates.ca.contains_key("ca-1"));
    assert_eq!(
        paths(load(config("ServerCertificateId = \"cert-none\"\n", app))),
        ["LoadBalancers[0].Listeners[0].ServerCertificateId"]
    );
    assert_eq!(
        paths(load(config(
            "ServerCertificateId = \"cert-app\"\nCACertificateId = \"ca-none\"\n",
            app
        ))),
        ["LoadBalancers[0].Listeners[0].CACertificateId"]
    );
    let extension = "ServerCertificateId = \"cert-app\"\nDomainExtensions = [ { DomainExtensionId = \"de-1\", Domain = \"www.example.com\", ServerCertificateId = \"cert-app\" } ]\n";
    assert_eq!(
        paths(load(config(extension, app))),
        ["LoadBalancers[0].Listeners[0].DomainExtensions[0].Domain"]
    );
    assert_eq!(
        paths(load(config(
            "ServerCertificateId = \"cert-app\"\n",
            &app.replace("app.key", "missing.key")
        ))),
        ["ServerCertificates[0].PrivateKey"]
    );
    assert_eq!(
        paths(load(config(
            "ServerCertificateId = \"cert-app\"\n",
            &app.replace("app.key", "www.key")
        ))),
        ["ServerCertificates[0].ServerCertificate"]
    );
    assert_eq!(
        paths(slb::config::parse(
            &config("ServerCertificateId = \"cert-app\"\n", app),
            "text"
        )),
        [
            "ServerCertificates[0].ServerCertificateId",
            "CACertificates[0].CACertificateId"
        ]
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
