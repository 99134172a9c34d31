//! Health checks against real backends in network namespaces (slb-behaviour.md §8): the checker
//! runs in a lab's LB namespace, the backends in a backend namespace, and each backend is made
//! to die, hang, answer slowly, answer 302/404/500 or the wrong UDP string, then recover.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use slb::{
    config,
    health::{Engine, Failure, Observation},
};
use tests::{
    api::{slb_binary, LabAgent},
    http_backend::{lock, Behaviour, HttpBackend},
};
use xtask::lab::{in_netns, netns_command, spawn_tcp_service, Lab, Service};

const POLL: Duration = Duration::from_millis(20);

/// A UDP server answering every datagram with the current reply string.
struct UdpBackend {
    reply: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    fn spawn(ns: &str, bind: SocketAddr, reply: &str) -> anyhow::Result<UdpBackend> {
        let socket = in_netns(ns, move || UdpSocket::bind(bind))??;
        socket.set_read_timeout(Some(POLL))?;
        let reply = Arc::new(Mutex::new(reply.to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply, stop) = (reply.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let r = lock(&reply).clone();
                        let _ = socket.send_to(r.as_bytes(), peer);
                    }
                }
            })
        };
        Ok(UdpBackend {
            reply,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a scenario does to its backend, and how its check must react.
enum Plan {
    /// Break after two passes, expect a flip on exactly the `UNHEALTHY`th failure with this
    /// reason, repair, expect a flip back on exactly the `HEALTHY`th pass.
    FlipAndBack {
        break_it: Box<dyn FnMut() -> anyhow::Result<()>>,
        repair: Box<dyn FnMut() -> anyhow::Result<()>>,
        reason: fn(&Failure) -> bool,
    },
    /// Every one of `PASSES` probes passes.
    StaysNormal,
}

const UNHEALTHY: u8 = 3;
const HEALTHY: u8 = 2;
const PASSES: usize = 3;

struct Scenario {
    name: &'static str,
    port: u16,
    plan: Plan,
    results: Vec<(bool, bool)>,
    phase: u8,
    done: bool,
}

impl Scenario {
    fn new(name: &'static str, port: u16, plan: Plan) -> Scenario {
        Scenario {
            name,
            port,
            plan,
            results: Vec::new(),
            phase: 0,
            done: false,
        }
    }

    /// Takes one observation of this scenario's check; returns an error on a broken rule.
    fn observe(&mut self, o: &Observation) -> anyhow::Result<()> {
        let ok = o.result.is_ok();
        self.results.push((ok, o.flipped));
        let name = self.name;
        let history = format!("{:?}", self.results);
        match &mut self.plan {
            Plan::StaysNormal => {
                if !ok || o.flipped {
                    bail!(
                        "{name}: expected passes only, got {:?} ({history})",
                        o.result
                    );
                }
                self.done = self.results.len() >= PASSES;
            }
            Plan::FlipAndBack {
                break_it,
                repair,
                reason,
            } => match self.phase {
                // Two passes, then break it.
                0 => {
                    if !ok || o.flipped {
                        bail!("{name}: healthy backend failed: {:?}", o.result);
                    }
                    if self.results.len() == 2 {
                        break_it()?;
                        self.phase = 1;
                        self.results.clear();
                    }
                }
                // Failing: passes may trail the change, then failures; the flip comes exactly
                // on the UNHEALTHY-th failure in a row (B8.10), never earlier.
                1 => {
                    let failures = self.results.iter().rev().take_while(|r| !r.0).count();
                    if let Err(f) = &o.result {
                        if !reason(f) {
                            bail!("{name}: unexpected failure reason {f}");
                        }
                    }
                    if o.flipped != (failures == usize::from(UNHEALTHY)) {
                        bail!("{name}: flip after {failures} failures in a row ({history})");
                    }
                    if o.flipped {
                        if o.verdict.healthy {
                            bail!("{name}: flipped to healthy while failing");
                        }
                        repair()?;
                        self.phase = 2;
                        self.results.clear();
                    }
                }
                _ => {
                    let passes = self.results.iter().rev().take_while(|r| r.0).count();
                    if o.flipped != (passes == usize::from(HEALTHY)) {
                        bail!("{name}: flip after {passes} passes in a row ({history})");
                    }
                    if o.flipped {
                        if !o.verdict.healthy {
                            bail!("{name}: flipped to unhealthy while passing");
                        }
                        self.done = true;
                    }
                }
            },
        }
        Ok(())
    }
}

fn listener(protocol: &str, port: u16, extra: &str) -> String {
    let l7 = if protocol.starts_with("http") {
        "StickySession = \"off\"\nHealthCheck = \"on\"\n"
    } else {
        ""
    };
    format!(
        "[[LoadBalancers.Listeners]]\nListenerProtocol = \"{protocol}\"\nListenerPort = {port}\nBackendServerPort = {port}\n\
         HealthyThreshold = {HEALTHY}\nUnhealthyThreshold = {UNHEALTHY}\nHealthCheckInterval = 1\nHealthCheckTimeout = 1\n{l7}{extra}"
    )
}

/// B8.3–B8.13 with real backends: each check flips after exactly `UnhealthyThreshold`
/// failures and back after exactly `HealthyThreshold` passes, and only for the right reason.
#[test]
fn checks_flip_after_exactly_the_thresholds() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return Ok(());
    }
    let lab = Lab::up("slbhc", 68, 1)?;
    let b = lab.backends()[0].clone();
    let v4 = b.v4;
    let at = move |port: u16| SocketAddr::new(IpAddr::V4(v4), port);
    // Silent UDP ports answer with ICMP port unreachable at once, not one per second.
    let ns = b.ns.clone();
    in_netns(&ns, || {
        std::fs::write("/proc/sys/net/ipv4/icmp_ratelimit", "0")
    })??;

    let tcp: Arc<Mutex<Option<Service>>> =
        Arc::new(Mutex::new(Some(spawn_tcp_service(&ns, at(7001), "tcp")?)));
    let http =
        |port, code| HttpBackend::spawn(&ns, at(port), "h", code, Duration::ZERO).map(Arc::new);
    let h302 = http(7002, 200)?;
    let h404 = http(7003, 200)?;
    let h500 = http(7004, 200)?;
    let hang = http(7005, 200)?;
    let accepts_3xx = http(7006, 302)?;
    let slow =
        HttpBackend::spawn(&ns, at(7007), "h", 200, Duration::from_millis(1500)).map(Arc::new)?;
    let get11 = http(7008, 204)?;
    let udp_wrong = Arc::new(UdpBackend::spawn(&ns, at(7009), "pong")?);
    let udp_icmp: Arc<Mutex<Option<UdpBackend>>> = Arc::new(Mutex::new(Some(UdpBackend::spawn(
        &ns,
        at(7010),
        "anything",
    )?)));

    let mut lbs = String::new();
    let listeners = [
        listener("tcp", 7001, ""),
        listener("http", 7002, "HealthCheckURI = \"/health\"\n"),
        listener("http", 7003, "HealthCheckURI = \"/\"\n"),
        listener("http", 7004, "HealthCheckURI = \"/\"\n"),
        listener("http", 7005, "HealthCheckURI = \"/\"\n"),
        listener(
            "http",
            7006,
            "HealthCheckURI = \"/\"\nHealthCheckHttpCode = \"http_2xx,http_3xx\"\n",
        ),
        // B8.9: a timeout below the interval is replaced by the interval; the answer comes
        // after 1.5 s, past HealthCheckTimeout but within the 2 s interval.
        listener("http", 7007, "HealthCheckURI = \"/\"\n").replace(
            "HealthCheckInterval = 1",
            "HealthCheckInterval = 2",
        ),
        listener(
            "tcp",
            7008,
            "HealthCheckType = \"http\"\nHealthCheckURI = \"/ready?x&y\"\nHealthCheckDomain = \"app.example\"\n\
             HealthCheckMethod = \"get\"\nHealthCheckHttpVersion = \"http1.1\"\n",
        ),
        listener(
            "udp",
            7009,
            "HealthCheckReq = \"ping\"\nHealthCheckExp = \"pong\"\n",
        ),
        listener("udp", 7010, ""),
    ];
    for (i, l) in listeners.iter().enumerate() {
        lbs.push_str(&format!(
            "[[LoadBalancers]]\nLoadBalancerId = \"lb-{i}\"\nAddress = \"10.68.200.{}\"\nBackendServers = [ {{ ServerId = \"{}\" }} ]\n{l}",
            i + 1,
            b.v4
        ));
    }
    let cfg = config::parse(&lbs, "health.toml")?;

    let set = |backend: &Arc<HttpBackend>,
               f: fn(&mut Behaviour)|
     -> Box<dyn FnMut() -> anyhow::Result<()>> {
        let backend = backend.clone();
        Box::new(move || {
            backend.set(f);
            Ok(())
        })
    };
    let status = |code: u16| -> fn(&Failure) -> bool {
        match code {
            302 => |f| matches!(f, Failure::Status { code: 302, .. }),
            404 => |f| matches!(f, Failure::Status { code: 404, .. }),
            _ => |f| matches!(f, Failure::Status { code: 500, .. }),
        }
    };
    let flip = |break_it, repair, reason| Plan::FlipAndBack {
        break_it,
        repair,
        reason,
    };
    let mut scenarios = vec![
        Scenario::new(
            "tcp backend dies",
            7001,
            flip(
                {
                    let tcp = tcp.clone();
                    Box::new(move || {
                        lock(&tcp).take();
                        Ok(())
                    })
                },
                {
                    let (tcp, ns) = (tcp.clone(), ns.clone());
                    Box::new(move || {
                        *lock(&tcp) = Some(spawn_tcp_service(&ns, at(7001), "tcp")?);
                        Ok(())
                    })
                },
                |f| matches!(f, Failure::Refused),
            ),
        ),
        Scenario::new(
            "http 302 with http_2xx",
            7002,
            flip(
                set(&h302, |b| b.code = 302),
                set(&h302, |b| b.code = 200),
                status(302),
            ),
        ),
        Scenario::new(
            "http 404",
            7003,
            flip(
                set(&h404, |b| b.code = 404),
                set(&h404, |b| b.code = 200),
                status(404),
            ),
        ),
        Scenario::new(
            "http 500",
            7004,
            flip(
                set(&h500, |b| b.code = 500),
                set(&h500, |b| b.code = 200),
                status(500),
            ),
        ),
        Scenario::new(
            "http hangs",
            7005,
            flip(
                set(&hang, |b| b.hang = true),
                set(&hang, |b| b.hang = false),
                |f| matches!(f, Failure::Timeout { seconds: 1 }),
            ),
        ),
        Scenario::new("http 302 with http_2xx,http_3xx", 7006, Plan::StaysNormal),
        Scenario::new(
            "http slower than the timeout, within the interval",
            7007,
            Plan::StaysNormal,
        ),
        Scenario::new("tcp listener, http GET 1.1 check", 7008, Plan::StaysNormal),
        Scenario::new(
            "udp wrong reply",
            7009,
            flip(
                {
                    let u = udp_wrong.clone();
                    Box::new(move || {
                        *lock(&u.reply) = "pang".into();
                        Ok(())
                    })
                },
                {
                    let u = udp_wrong.clone();
                    Box::new(move || {
                        *lock(&u.reply) = "pong".into();
                        Ok(())
                    })
                },
                |f| matches!(f, Failure::Mismatch { got, .. } if got == "pang"),
            ),
        ),
        Scenario::new(
            "udp port closed (ICMP)",
            7010,
            flip(
                {
                    let u = udp_icmp.clone();
                    Box::new(move || {
                        lock(&u).take();
                        Ok(())
                    })
                },
                {
                    let (u, ns) = (udp_icmp.clone(), ns.clone());
                    Box::new(move || {
                        *lock(&u) = Some(UdpBackend::spawn(&ns, at(7010), "anything")?);
                        Ok(())
                    })
                },
                |f| matches!(f, Failure::PortUnreachable),
            ),
        ),
    ];

    let rt = in_netns(lab.lb_ns(), || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    })??;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = rt.block_on(async {
        let mut e = Engine::with_observer(Some(tx));
        e.apply(&cfg);
        e
    });
    assert_eq!(
        engine.status().snapshot().len(),
        listeners.len(),
        "one checker per listener"
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut by_port: HashMap<u16, usize> = HashMap::new();
    for (i, s) in scenarios.iter().enumerate() {
        by_port.insert(s.port, i);
    }
    while scenarios.iter().any(|s| !s.done) {
        let left = deadline.saturating_duration_since(Instant::now());
        let o = rt
            .block_on(async { tokio::time::timeout(left, rx.recv()).await })
            .map_err(|_| {
                let pending: Vec<String> = scenarios
                    .iter()
                    .filter(|s| !s.done)
                    .map(|s| format!("{} {:?}", s.name, s.results))
                    .collect();
                anyhow::anyhow!("timed out; unfinished: {pending:?}")
            })?
            .context("checker channel closed")?;
        let s = &mut scenarios[by_port[&o.check.target.port()]];
        if !s.done {
            s.observe(&o)?;
        }
    }
    drop(engine);
    drop(rt);

    // B8.4/B8.5: HEAD by default, the URI, and the backend's address as Host for `$_ip`.
    let head = &h302.requests()[0];
    assert!(head.starts_with("HEAD /health HTTP/1.0\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: {}\r\n", b.v4)), "{head}");
    // B8.17 and HealthCheckMethod: GET, HTTP/1.1, the configured domain.
    let head = &get11.requests()[0];
    assert!(head.starts_with("GET /ready?x&y HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nHost: app.example\r\n"), "{head}");
    drop((accepts_3xx, slow, h404, h500, hang));
    lab.down()?;
    Ok(())
}

/// Connection attempts, stamped with when they ended.
type Attempts = Vec<(Instant, Result<String, String>)>;

/// One connection attempt through the VIP: which backend answered, or the error.
fn attempt(vip: SocketAddr) -> Result<String, String> {
    let s =
        TcpStream::connect_timeout(&vip, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    line.split_whitespace()
        .next()
        .map(String::from)
        .ok_or_else(|| "empty greeting".to_string())
}

/// B4.15 end to end through XDP, with the real agent: a client opens connections all the time;
/// one backend dies and stops getting new connections within UnhealthyThreshold × interval
/// plus one interval, none fail after that, connections established to the others are
/// untouched; back up, it gets connections again after HealthyThreshold passes. The API's
/// DescribeHealthStatus follows (B8.14).
#[test]
fn a_dead_backend_leaves_the_xdp_path_and_comes_back() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    const API_PORT: u16 = 18670;
    let lab = Lab::up("slbhe", 69, 3)?;
    let backend_addr = |i: usize| SocketAddr::new(IpAddr::V4(lab.backends()[i].v4), 8080);
    let mut services: Vec<Option<Service>> = Vec::new();
    for (i, b) in lab.backends().iter().enumerate() {
        services.push(Some(spawn_tcp_service(
            &b.ns,
            backend_addr(i),
            &format!("b{}", i + 1),
        )?));
    }
    let agent = LabAgent::new(&lab, "health")?;
    let keys = agent.keys("hc", "hcsecret")?;
    let servers: Vec<String> = lab
        .backends()
        .iter()
        .map(|b| format!("{{ ServerId = \"{}\" }}", b.v4))
        .collect();
    let serve = agent.start(&format!(
            "\n[Api]\nListen = \"127.0.0.1:{API_PORT}\"\nKeysFile = \"{}\"\nStatePath = \"{}\"\nVipPool = [\"{}/32\"]\n\n\
             [[LoadBalancers]]\nLoadBalancerId = \"lb-hc\"\nAddress = \"{}\"\nBackendServers = [{}]\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 8080\nScheduler = \"rr\"\n\
             HealthCheckInterval = 1\nUnhealthyThreshold = 2\nHealthyThreshold = 2\n\
             [[LoadBalancers.MasterSlaveServerGroups]]\nMasterSlaveServerGroupId = \"rsp-ms\"\n\
             MasterSlaveBackendServers = [ {{ ServerId = \"{}\", Port = 8080, ServerType = \"Master\" }}, {{ ServerId = \"{}\", Port = 8080, ServerType = \"Slave\" }} ]\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 81\nMasterSlaveServerGroupId = \"rsp-ms\"\n\
             HealthCheckInterval = 1\nUnhealthyThreshold = 2\nHealthyThreshold = 2\n",
            keys.display(),
            agent.dir.join("state.redb").display(),
            lab.vip_v4(),
            lab.vip_v4(),
            servers.join(", "),
            lab.backends()[1].v4,
            lab.backends()[2].v4,
    ))?;
    let health = |lb_ns: String| -> anyhow::Result<Vec<(String, String)>> {
        in_netns(&lb_ns, move || -> anyhow::Result<Vec<(String, String)>> {
            let client = slb::api::client::Client {
                addr: SocketAddr::from(([127, 0, 0, 1], API_PORT)),
                key_id: "hc".into(),
                secret: "hcsecret".into(),
                tls: None,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (status, body) =
                rt.block_on(client.call("DescribeHealthStatus", &[("LoadBalancerId", "lb-hc")]))?;
            if status != 200 {
                bail!("DescribeHealthStatus: {body}");
            }
            let mut out: Vec<(String, String)> = body["BackendServers"]["BackendServer"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["ListenerPort"] == 80)
                .map(|s| {
                    (
                        s["ServerId"].as_str().unwrap_or("").to_string(),
                        s["ServerHealthStatus"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            out.sort();
            Ok(out)
        })?
    };
    let expect_health = |statuses: [&str; 3]| -> Vec<(String, String)> {
        lab.backends()
            .iter()
            .zip(statuses)
            .map(|(b, s)| (b.v4.to_string(), s.to_string()))
            .collect()
    };
    assert_eq!(
        health(lab.lb_ns().to_string())?,
        expect_health(["normal"; 3]),
        "B8.15"
    );

    let master_slave = || -> anyhow::Result<String> {
        let vip = SocketAddr::new(IpAddr::V4(lab.vip_v4()), 81);
        in_netns(&lab.client().ns, move || attempt(vip))?.map_err(|e| anyhow::anyhow!(e))
    };
    assert_eq!(
        master_slave()?,
        "b2",
        "B4.6: the master while it is healthy"
    );

    // Long-lived connections to every backend, opened before anything fails.
    let vip = SocketAddr::new(IpAddr::V4(lab.vip_v4()), 80);
    let established: Vec<(String, TcpStream)> = in_netns(&lab.client().ns, move || {
        (0..6)
            .map(|_| -> anyhow::Result<(String, TcpStream)> {
                let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                Ok((line.split_whitespace().next().unwrap_or("").to_string(), s))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })??;

    // The client: a connection every 20 ms, each result stamped.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Attempts>> = Arc::default();
    let client = {
        let (stop, log, ns) = (stop.clone(), log.clone(), lab.client().ns.clone());
        thread::spawn(move || {
            in_netns(&ns, move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = attempt(vip);
                    lock(&log).push((Instant::now(), r));
                    thread::sleep(POLL);
                }
            })
        })
    };
    thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    services[1].take();
    // UnhealthyThreshold (2) × interval (1 s) + one interval, and a little for the jitter
    // (≤ 1/16 interval per round) and the reprogramming.
    let isolated = killed + Duration::from_millis(3000 + 300);
    thread::sleep(isolated.saturating_duration_since(Instant::now()) + Duration::from_secs(2));
    assert_eq!(
        health(lab.lb_ns().to_string())?,
        expect_health(["normal", "abnormal", "normal"]),
        "B8.14 after the kill"
    );
    assert_eq!(
        master_slave()?,
        "b3",
        "B4.6: the slave while the master is down"
    );
    let b2 = lab.backends()[1].v4;
    let metrics = agent.metrics(API_PORT)?;
    let row = format!(
        "slb_backend_healthy{{load_balancer_id=\"lb-hc\",listener=\"tcp/80\",server_id=\"{b2}\",backend=\"{b2}:8080\",check=\"tcp {b2}:8080\"}} 0\n"
    );
    assert!(metrics.contains(&row), "{row} in {metrics}");
    assert!(
        metrics.contains(&format!("slb_health_flips_total{{load_balancer_id=\"lb-hc\",listener=\"tcp/80\",server_id=\"{b2}\"")),
        "{metrics}"
    );
    let cli = netns_command(lab.lb_ns(), slb_binary()?)
        .args([
            "health",
            "--endpoint",
            &format!("127.0.0.1:{API_PORT}"),
            "--keys-file",
        ])
        .arg(&keys)
        .output()?;
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "slb health: {table}");
    assert!(
        table.contains(&format!("lb-hc\ttcp/80\t{b2}\t{b2}:8080\tabnormal\n")),
        "{table}"
    );
    assert!(
        table.contains(&format!("lb-hc\ttcp/81\t{b2}\t{b2}:8080\tabnormal\n")),
        "{table}"
    );
    let restarted = Instant::now();
    services[1] = Some(spawn_tcp_service(
        &lab.backends()[1].ns,
        backend_addr(1),
        "b2",
    )?);
    // HealthyThreshold (2) × interval + one interval, plus the same slack.
    let back = restarted + Duration::from_millis(3000 + 300);
    thread::sleep(back.saturating_duration_since(Instant::now()) + Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let log = lock(&log).clone();
    assert_eq!(
        health(lab.lb_ns().to_string())?,
        expect_health(["normal"; 3]),
        "B8.14 after the restart"
    );
    assert_eq!(
        master_slave()?,
        "b2",
        "B4.6: back to the master once it is healthy"
    );

    let before_kill: Vec<_> = log.iter().filter(|(t, _)| *t < killed).collect();
    assert!(
        before_kill.iter().any(|(_, r)| r.as_deref() == Ok("b2")),
        "b2 served before the kill"
    );
    let while_down: Vec<_> = log
        .iter()
        .filter(|(t, _)| *t > isolated && *t < restarted)
        .collect();
    assert!(
        while_down.len() > 20,
        "the client kept connecting: {}",
        while_down.len()
    );
    for (_, r) in &while_down {
        match r {
            Ok(name) if name == "b1" || name == "b3" => {}
            other => bail!("after isolation a new connection got {other:?}"),
        }
    }
    let failed = log
        .iter()
        .filter(|(t, r)| *t > killed && *t <= isolated && r.is_err())
        .count();
    let last_bad = log
        .iter()
        .filter(|(t, r)| {
            *t > killed && *t < restarted && r.as_deref() != Ok("b1") && r.as_deref() != Ok("b3")
        })
        .map(|(t, _)| t.duration_since(killed))
        .max()
        .unwrap_or_default();
    eprintln!(
        "{failed} connections failed after the kill, the last {last_bad:?} after it; none later"
    );
    let after_back: Vec<_> = log.iter().filter(|(t, _)| *t > back).collect();
    assert!(
        after_back.iter().any(|(_, r)| r.as_deref() == Ok("b2")),
        "b2 gets connections again: {:?}",
        after_back
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>()
    );
    assert!(after_back.iter().all(|(_, r)| r.is_ok()), "{after_back:?}");
    // Established connections to the healthy backends were untouched: they still echo.
    for (name, mut s) in established {
        if name == "b2" {
            continue;
        }
        s.write_all(b"still there\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        assert_eq!(line, "still there\n", "established connection to {name}");
    }
    drop(serve);
    drop(agent);
    drop(services);
    lab.down()?;
    Ok(())
}
