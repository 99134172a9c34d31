//! HTTP listeners served by the agent (slb-behaviour.md §9), end to end: a client namespace, the
//! real `slb serve` in the LB namespace, HTTP backends in backend namespaces.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tests::{api::LabAgent, http_backend::HttpBackend};
use xtask::lab::{in_netns, Lab};

/// One response: status, head (lower-cased names) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends `raw` on `s` and reads one response (Content-Length bodies, which is what the proxy
/// and the test backends send).
fn exchange(s: &mut BufReader<TcpStream>, raw: &str) -> anyhow::Result<Reply> {
    s.get_mut().write_all(raw.as_bytes())?;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line)? == 0 {
            bail!("connection closed before a response ({head:?})");
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let mut reply = Reply {
        status,
        head,
        body: String::new(),
    };
    let len: usize = reply
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if !raw.starts_with("HEAD ") {
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        reply.body = String::from_utf8_lossy(&body).into_owned();
    }
    Ok(reply)
}

/// `slb_proxy_worker_connections` of each worker, in worker order.
fn worker_connections(metrics: &str) -> Vec<usize> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("slb_proxy_worker_connections{worker=\""))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn connect(vip: SocketAddr) -> anyhow::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(s))
}

fn get(vip: SocketAddr, extra: &str) -> anyhow::Result<Reply> {
    exchange(
        &mut connect(vip)?,
        &format!("GET /path?q=1 HTTP/1.1\r\nHost: app.example\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// B4.15, B4.17, B5.4, B9.1–B9.4, B9.7–B9.11, B9.13: an HTTP listener over two backends; a
/// forwarding rule's group is health-checked and steered like the listener's (B11.4, B4.15);
/// the request metrics count what every worker served; new connections go to the worker with
/// the fewest open.
#[test]
fn http_listener_proxies_to_healthy_backends() -> anyhow::Result<()> {
    const API_PORT: u16 = 18_672;
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let lab = Lab::up("slbl7", 70, 2)?;
    let backend_addr = |i: usize| SocketAddr::new(IpAddr::V4(lab.backends()[i].v4), 8080);
    let mut backends: Vec<Option<HttpBackend>> = Vec::new();
    for (i, b) in lab.backends().iter().enumerate() {
        backends.push(Some(HttpBackend::spawn(
            &b.ns,
            backend_addr(i),
            &format!("b{}", i + 1),
            200,
            Duration::ZERO,
        )?));
    }
    let mut rule_backend = Some(HttpBackend::spawn(
        &lab.backends()[1].ns,
        SocketAddr::new(IpAddr::V4(lab.backends()[1].v4), 8081),
        "b2-rule",
        200,
        Duration::ZERO,
    )?);
    let servers: Vec<String> = lab
        .backends()
        .iter()
        .map(|b| format!("{{ ServerId = \"{}\" }}", b.v4))
        .collect();
    let agent = LabAgent::new(&lab, "l7")?;
    let keys = agent.keys("l7", "l7secret")?;
    let serve = agent.start(&format!(
        "\n[Api]\nListen = \"127.0.0.1:{API_PORT}\"\nKeysFile = \"{}\"\nStatePath = \"{}\"\n\n\
         [[LoadBalancers]]\nLoadBalancerId = \"lb-l7\"\nAddress = \"{}\"\nBackendServers = [{}]\n\
         VServerGroups = [ {{ VServerGroupId = \"rsp-b2\", BackendServers = [ {{ ServerId = \"{}\", Port = 8081 }} ] }} ]\n\
         [[LoadBalancers.Listeners]]\nListenerProtocol = \"http\"\nListenerPort = 80\nBackendServerPort = 8080\n\
         Scheduler = \"rr\"\nStickySession = \"off\"\nXForwardedFor_SLBID = \"on\"\nXForwardedFor_proto = \"on\"\n\
         IdleTimeout = 2\nRequestTimeout = 2\n\
         HealthCheck = \"on\"\nHealthCheckURI = \"/\"\nHealthCheckInterval = 1\nUnhealthyThreshold = 2\nHealthyThreshold = 2\n\
         Rules = [ {{ RuleId = \"rule-b2\", RuleName = \"b2\", Url = \"/only-b2\", VServerGroupId = \"rsp-b2\" }} ]\n",
        keys.display(),
        agent.dir.join("state.redb").display(),
        lab.vip_v4(),
        servers.join(", "),
        lab.backends()[1].v4,
    ))?;
    let vip = SocketAddr::new(IpAddr::V4(lab.vip_v4()), 80);
    let client_ip = lab.client().v4;
    let client_ns = lab.client().ns.clone();
    let in_client = |f: Box<dyn FnOnce() -> anyhow::Result<()> + Send>| -> anyhow::Result<()> {
        in_netns(&client_ns, f)?
    };

    // B5.4 rr in turn; B9.1 XFF appended; B9.2/B9.4 switched headers; client copies of the
    // LB's own headers dropped; B9.13 HTTP/1.1 to the backend.
    in_client(Box::new(move || {
        let mut names = Vec::new();
        for _ in 0..6 {
            let r = get(
                vip,
                "X-Forwarded-For: 192.0.2.7\r\nSLB-IP: forged\r\nX-Forwarded-Proto: https\r\n",
            )?;
            assert_eq!(r.status, 200, "{r:?}");
            names.push(r.header("x-backend").context("X-Backend")?);
            let b = r.body.to_ascii_lowercase();
            assert!(b.starts_with("get /path?q=1 http/1.1\r\n"), "{}", r.body);
            assert!(
                b.contains(&format!("\r\nx-forwarded-for: 192.0.2.7, {client_ip}\r\n")),
                "{}",
                r.body
            );
            assert!(b.contains("\r\nslb-id: lb-l7\r\n"), "{}", r.body);
            assert!(b.contains("\r\nx-forwarded-proto: http\r\n"), "{}", r.body);
            assert!(!b.contains("slb-ip"), "{}", r.body);
            assert!(b.contains("\r\nhost: app.example\r\n"), "{}", r.body);
        }
        assert_eq!(names, ["b1", "b2", "b1", "b2", "b1", "b2"]);
        // B9.13: an HTTP/1.0 client is forwarded as HTTP/1.0.
        let r = exchange(&mut connect(vip)?, "GET /old HTTP/1.0\r\nHost: x\r\n\r\n")?;
        assert!(r.body.starts_with("GET /old HTTP/1.0\r\n"), "{}", r.body);
        // B9.9: the 100th request on a keep-alive connection is the last.
        let mut c = connect(vip)?;
        for n in 1..=100 {
            let r = exchange(&mut c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
            assert_eq!(r.status, 200);
            let close = r
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            assert_eq!(close, n == 100, "request {n}: {}", r.head);
        }
        let mut rest = Vec::new();
        assert_eq!(
            c.read_to_end(&mut rest)?,
            0,
            "closed after the 100th response"
        );
        // B9.7: an idle keep-alive connection is closed after IdleTimeout (2 s, ±2 s).
        let mut c = connect(vip)?;
        exchange(&mut c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let idle = Instant::now();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest)?, 0);
        let waited = idle.elapsed();
        assert!(
            waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(4),
            "closed after {waited:?}"
        );
        Ok(())
    }))?;

    // Request metrics: every worker's responses, summed per backend (the kernel spreads the
    // nine connections above over the workers). rr gave each backend 3 of the first 6
    // requests, then b1 the HTTP/1.0 one, each 50 of the 100 on one connection, and b2 the
    // last.
    let metrics = agent.metrics(API_PORT)?;
    for i in 0..2 {
        let row = format!(
            "slb_http_responses_total{{listener=\"lb-l7/http/80\",backend=\"{}\",code=\"2xx\"}} 54\n",
            backend_addr(i)
        );
        assert!(metrics.contains(&row), "{row} in {metrics}");
    }

    // New connections go to the worker with the fewest open (the worker picker): opened one
    // at a time, they stay spread evenly; the kernel's 4-tuple hash alone would keep 16 in
    // step with a chance of 1 in 256. Each is counted before the next is opened.
    let open_per_worker = |total: usize| -> anyhow::Result<Vec<usize>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let counts = worker_connections(&agent.metrics(API_PORT)?);
            if counts.iter().sum::<usize>() == total || Instant::now() > deadline {
                return Ok(counts);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(open_per_worker(0)?.iter().sum::<usize>(), 0);
    let mut idle = Vec::new();
    for n in 1..=16 {
        idle.push(in_netns(&client_ns, move || TcpStream::connect(vip))??);
        let counts = open_per_worker(n)?;
        assert_eq!(counts.iter().sum::<usize>(), n, "{counts:?}");
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            max.zip(min).is_some_and(|(a, b)| a - b <= 1),
            "{n}: {counts:?}"
        );
    }
    drop(idle);

    // B9.11: a client that leaves before the answer does not cut the backend exchange off.
    for b in backends.iter().flatten() {
        b.set(|b| b.delay = Duration::from_secs(1));
    }
    in_client(Box::new(move || {
        let mut c = connect(vip)?;
        c.get_mut()
            .write_all(b"GET /leaving HTTP/1.1\r\nHost: x\r\n\r\n")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }))?;
    std::thread::sleep(Duration::from_millis(1500));
    let asked: usize = backends
        .iter()
        .flatten()
        .map(|b| {
            b.requests()
                .iter()
                .filter(|r| r.starts_with("GET /leaving "))
                .count()
        })
        .sum();
    assert_eq!(asked, 1, "the request reached one backend");
    let abandoned: usize = backends.iter().flatten().map(HttpBackend::abandoned).sum();
    assert_eq!(abandoned, 0, "the LB kept the backend connection open");

    // B9.8: a backend silent past RequestTimeout gives 504.
    for b in backends.iter().flatten() {
        b.set(|b| b.delay = Duration::from_secs(4));
    }
    in_client(Box::new(move || {
        let started = Instant::now();
        let r = get(vip, "")?;
        assert_eq!(r.status, 504, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        Ok(())
    }))?;
    for b in backends.iter().flatten() {
        b.set(|b| b.delay = Duration::ZERO);
    }

    let only_b2 = move || {
        exchange(
            &mut connect(vip)?,
            "GET /only-b2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    };
    // B11.4: the rule's group, b2's second service, which the listener's group does not have.
    in_client(Box::new(move || {
        let r = only_b2()?;
        assert_eq!(r.header("x-backend").as_deref(), Some("b2-rule"), "{r:?}");
        Ok(())
    }))?;
    // B4.15 for a rule's group: its member is checked too; once that check fails (2 × 1 s),
    // the rule has no usable backend (503, not a failed exchange), and the listener's group
    // is untouched.
    rule_backend.take();
    std::thread::sleep(Duration::from_millis(3500));
    in_client(Box::new(move || {
        let r = only_b2()?;
        assert_eq!(r.status, 503, "{r:?}");
        let names: Vec<_> = (0..2)
            .map(|_| get(vip, "").map(|r| r.header("x-backend")))
            .collect::<anyhow::Result<_>>()?;
        assert!(names.contains(&Some("b2".to_string())), "{names:?}");
        Ok(())
    }))?;

    // B9.10: b2 dies; before its check fails, requests scheduled to it go to b1 instead.
    backends[1].take();
    in_client(Box::new(move || {
        for _ in 0..4 {
            let r = get(vip, "")?;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.header("x-backend").as_deref(), Some("b1"));
        }
        Ok(())
    }))?;
    // B4.17: with both dead, 502 until the checks fail them, then 503.
    backends[0].take();
    in_client(Box::new(move || {
        let r = get(vip, "")?;
        assert!(r.status == 502 || r.status == 503, "{r:?}");
        std::thread::sleep(Duration::from_secs(4));
        let r = get(vip, "")?;
        assert_eq!(r.status, 503, "{r:?}");
        Ok(())
    }))?;
    // B4.15: back after HealthyThreshold passes.
    backends[0] = Some(HttpBackend::spawn(
        &lab.backends()[0].ns,
        backend_addr(0),
        "b1",
        200,
        Duration::ZERO,
    )?);
    std::thread::sleep(Duration::from_secs(4));
    in_client(Box::new(move || {
        let r = get(vip, "")?;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend").as_deref(), Some("b1"));
        Ok(())
    }))?;
    drop(serve);
    drop(agent);
    drop(backends);
    lab.down()?;
    Ok(())
}
