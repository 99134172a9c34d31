//! End to end through the XDP path: a client namespace, an LB namespace running the agent's
//! data plane, backend namespaces running real TCP and UDP services (xtask's lab). Each test
//! has its own lab number and pin directory, so they run in parallel.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use slb::{agent::Agent, config};
use xtask::lab::{in_netns, spawn_tcp_service, spawn_udp_service, Lab, Service};

/// A lab with services on every backend (TCP 8080, UDP 5353).
struct Env {
    lab: Lab,
    _services: Vec<Service>,
    pin: String,
}

impl Env {
    fn up(name: &str, n: u8, backends: usize) -> anyhow::Result<Env> {
        let lab = Lab::up(&format!("slbt{n}"), n, backends)?;
        let mut services = Vec::new();
        for (i, b) in lab.backends().iter().enumerate() {
            let label = format!("b{}", i + 1);
            services.push(spawn_tcp_service(
                &b.ns,
                SocketAddr::new(IpAddr::V4(b.v4), 8080),
                &label,
            )?);
            services.push(spawn_udp_service(
                &b.ns,
                SocketAddr::new(IpAddr::V4(b.v4), 5353),
                &label,
            )?);
            services.push(spawn_tcp_service(
                &b.ns,
                SocketAddr::new(IpAddr::V6(b.v6), 8080),
                &label,
            )?);
        }
        let pin = format!("/sys/fs/bpf/slb-test-{name}-{}", std::process::id());
        Ok(Env {
            lab,
            _services: services,
            pin,
        })
    }

    /// Configuration with the lab's interfaces and pin path and the given load balancer body.
    fn config(&self, lb: &str) -> anyhow::Result<config::Config> {
        let mut ifaces = vec![format!("\"{}\"", self.lab.client().lb_iface)];
        ifaces.extend(
            self.lab
                .backends()
                .iter()
                .map(|b| format!("\"{}\"", b.lb_iface)),
        );
        let text = format!(
            "[Agent]\nInterfaces = [{}]\nPinPath = \"{}\"\nFlowTableSize = 65536\n\n[[LoadBalancers]]\nLoadBalancerId = \"lb-t\"\nAddress = \"{}\"\n{lb}",
            ifaces.join(", "),
            self.pin,
            self.lab.vip_v4()
        );
        Ok(config::parse(&text, "test.toml")?)
    }

    fn start(&self, cfg: config::Config) -> anyhow::Result<Agent> {
        let (agent, _) = in_netns(self.lab.lb_ns(), move || Agent::start(&cfg))??;
        Ok(agent)
    }

    fn backend_servers(&self, weights: &[u8]) -> String {
        let items: Vec<String> = self
            .lab
            .backends()
            .iter()
            .zip(weights)
            .map(|(b, w)| format!("{{ ServerId = \"{}\", Weight = {w} }}", b.v4))
            .collect();
        format!("BackendServers = [{}]\n", items.join(", "))
    }

    /// Opens `count` TCP connections from the client (from `src` if given), returning each
    /// greeting `<backend> <peer>` split in two.
    fn connect_many(
        &self,
        count: usize,
        src: Option<IpAddr>,
    ) -> anyhow::Result<Vec<(String, SocketAddr)>> {
        let vip = SocketAddr::new(IpAddr::V4(self.lab.vip_v4()), 80);
        in_netns(
            &self.lab.client().ns,
            move || -> anyhow::Result<Vec<(String, SocketAddr)>> {
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    let s = match src {
                        Some(ip) => socket2_connect(ip, vip)?,
                        None => TcpStream::connect_timeout(&vip, Duration::from_secs(2))?,
                    };
                    out.push(greeting(&s)?);
                }
                Ok(out)
            },
        )?
    }

    fn stop(self, agent: Agent) {
        drop(agent);
        let _ = slb::dataplane::loader::unload(std::path::Path::new(&self.pin));
    }
}

fn socket2_connect(src: IpAddr, dst: SocketAddr) -> anyhow::Result<TcpStream> {
    // Bind to a chosen source address with std only: connect via a bound listener-less socket
    // is not in std, so use libc directly.
    // SAFETY: plain socket calls on a fresh descriptor; every pointer outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let sin = |a: SocketAddr| -> libc::sockaddr_in {
            let mut s: libc::sockaddr_in = std::mem::zeroed();
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = a.port().to_be();
            if let IpAddr::V4(v4) = a.ip() {
                s.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            }
            s
        };
        // connect() honours SO_SNDTIMEO, so a lost SYN fails in 2 s rather than minutes.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let local = sin(SocketAddr::new(src, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let remote = sin(dst);
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(stream)
    }
}

fn greeting(s: &TcpStream) -> anyhow::Result<(String, SocketAddr)> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let (name, peer) = line
        .trim()
        .split_once(' ')
        .ok_or_else(|| anyhow!("bad greeting {line:?}"))?;
    Ok((name.to_string(), peer.parse().context("peer address")?))
}

fn tcp_listener(port_line: &str, extra: &str) -> String {
    format!("[[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 8080\n{port_line}{extra}\n")
}

/// B12.1, B4.9, B5.2: 1200 new TCP connections through XDP split 2:1:1 by weight, and every
/// backend sees the client's own address. UDP too (B12.1).
#[test]
fn tcp_and_udp_through_xdp_split_by_weight() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let env = Env::up("wrr", 61, 3)?;
    let lb = format!(
        "{}{}{}",
        env.backend_servers(&[100, 50, 50]),
        tcp_listener("Scheduler = \"wrr\"\n", ""),
        "[[LoadBalancers.Listeners]]\nListenerProtocol = \"udp\"\nListenerPort = 53\nBackendServerPort = 5353\nScheduler = \"sch\"\n"
    );
    let agent = env.start(env.config(&lb)?)?;
    let results = env.connect_many(1200, None)?;
    let client = IpAddr::V4(env.lab.client().v4);
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (name, peer) in &results {
        assert_eq!(
            peer.ip(),
            client,
            "backend saw {peer}, not the client (B12.1)"
        );
        *per.entry(name.clone()).or_default() += 1;
    }
    // Weighted round robin is exact per CPU; allow 5% of the total for CPU interleaving.
    let share = |n: &str| per.get(n).copied().unwrap_or(0) as f64 / 1200.0;
    assert!((share("b1") - 0.5).abs() < 0.05, "{per:?}");
    assert!((share("b2") - 0.25).abs() < 0.05, "{per:?}");
    assert!((share("b3") - 0.25).abs() < 0.05, "{per:?}");
    let vip = SocketAddr::new(IpAddr::V4(env.lab.vip_v4()), 53);
    let reply = in_netns(&env.lab.client().ns, move || -> anyhow::Result<String> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"hi", vip)?;
        let mut buf = [0u8; 200];
        let (n, from) = s.recv_from(&mut buf)?;
        // The reply comes from the VIP and listener port: reverse NAT worked.
        anyhow::ensure!(from == vip, "reply from {from}");
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })??;
    assert!(
        reply.contains(&client.to_string()),
        "UDP backend saw {reply}"
    );
    env.stop(agent);
    Ok(())
}

/// B5.5, B5.8: `sch` keeps a source on one backend; removing one of three backends remaps only
/// the sources that were on it (plus a small churn).
#[test]
fn source_hash_is_sticky_and_consistent() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let env = Env::up("sch", 62, 3)?;
    let sources: Vec<IpAddr> = (10..130u8)
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(10, 62, 0, i)))
        .collect();
    for ip in &sources {
        let ns = env.lab.client().ns.clone();
        let status = std::process::Command::new("ip")
            .args(["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .status()?;
        anyhow::ensure!(status.success(), "adding {ip}");
    }
    let cfg = |weights: &[u8]| {
        env.config(&format!(
            "{}{}",
            env.backend_servers(weights),
            tcp_listener("Scheduler = \"sch\"\n", "")
        ))
    };
    let mut agent = env.start(cfg(&[100, 100, 100])?)?;
    let mut before = BTreeMap::new();
    for ip in &sources {
        let r = env.connect_many(3, Some(*ip))?;
        assert!(
            r.iter().all(|(n, _)| *n == r[0].0),
            "source {ip} spread over {r:?}"
        );
        before.insert(*ip, r[0].0.clone());
    }
    // Drain b3 by removing it from the group (a reload applies only the difference).
    let removed = env.config(&format!(
        "BackendServers = [{{ ServerId = \"{}\" }}, {{ ServerId = \"{}\" }}]\n{}",
        env.lab.backends()[0].v4,
        env.lab.backends()[1].v4,
        tcp_listener("Scheduler = \"sch\"\n", "")
    ))?;
    agent.reload(&removed)?;
    let mut moved_other = 0;
    for ip in &sources {
        let now = env.connect_many(1, Some(*ip))?[0].0.clone();
        if before[ip] != "b3" && now != before[ip] {
            moved_other += 1;
        }
        assert_ne!(now, "b3");
    }
    // Sources not on the removed backend stay put, up to a small churn (measured < 8%).
    assert!(
        moved_other * 100 / sources.len() < 10,
        "{moved_other} of {} moved",
        sources.len()
    );
    env.stop(agent);
    Ok(())
}

/// B3.13, B2.2: a stopped listener and an inactive instance forward nothing; starting again
/// forwards again.
#[test]
fn stopped_listener_and_inactive_instance_forward_nothing() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let env = Env::up("stop", 63, 1)?;
    let servers = env.backend_servers(&[100]);
    let mut agent = env.start(env.config(&format!(
        "{servers}{}",
        tcp_listener("", "Status = \"stopped\"\n")
    ))?)?;
    assert!(
        env.connect_many(1, None).is_err(),
        "a stopped listener forwarded (B3.13)"
    );
    agent.reload(&env.config(&format!("{servers}{}", tcp_listener("", "")))?)?;
    assert_eq!(env.connect_many(5, None)?.len(), 5);
    agent.reload(&env.config(&format!(
        "LoadBalancerStatus = \"inactive\"\n{servers}{}",
        tcp_listener("", "")
    ))?)?;
    assert!(
        env.connect_many(1, None).is_err(),
        "an inactive instance forwarded (B2.2)"
    );
    agent.reload(&env.config(&format!("{servers}{}", tcp_listener("", "")))?)?;
    assert_eq!(env.connect_many(5, None)?.len(), 5);
    env.stop(agent);
    Ok(())
}

/// Restarting the agent keeps established flows: 100 open connections still echo after a new
/// agent adopted the pinned maps and swapped the program behind the pinned links.
#[test]
fn agent_restart_keeps_open_connections() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let env = Env::up("restart", 64, 2)?;
    let cfg_text = format!(
        "{}{}",
        env.backend_servers(&[100, 100]),
        tcp_listener("Scheduler = \"wrr\"\n", "")
    );
    let agent = env.start(env.config(&cfg_text)?)?;
    let vip = SocketAddr::new(IpAddr::V4(env.lab.vip_v4()), 80);
    let conns = in_netns(
        &env.lab.client().ns,
        move || -> anyhow::Result<Vec<TcpStream>> {
            (0..100)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
                    greeting(&s)?;
                    Ok(s)
                })
                .collect()
        },
    )??;
    drop(agent);
    let agent = env.start(env.config(&cfg_text)?)?;
    let echoed = in_netns(&env.lab.client().ns, move || -> anyhow::Result<usize> {
        let mut ok = 0;
        for (i, mut s) in conns.into_iter().enumerate() {
            let msg = format!("ping {i}\n");
            s.write_all(msg.as_bytes())?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf)?;
            if buf == msg.as_bytes() {
                ok += 1;
            }
        }
        Ok(ok)
    })??;
    assert_eq!(echoed, 100, "connections lost across the restart");
    env.stop(agent);
    Ok(())
}

/// IPv6 end to end (B12.1, B5.5): `tch` over three IPv6 backends; each backend sees the client's
/// own IPv6 address and every connection is answered.
#[test]
fn ipv6_tcp_through_xdp() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let env = Env::up("v6", 65, 3)?;
    // While the LB's link-local address is tentative the kernel solicits no neighbour for a
    // packet XDP passes up, and the first connection waits ~2 s for its backend's MAC.
    for ns in env.lab.namespaces() {
        let tentative = xtask::cmd::output(std::process::Command::new("ip").args([
            "-n",
            ns,
            "-6",
            "addr",
            "show",
            "tentative",
        ]))?;
        assert!(
            tentative.is_empty(),
            "{ns} has tentative addresses:\n{tentative}"
        );
    }
    let servers: Vec<String> = env
        .lab
        .backends()
        .iter()
        .map(|b| format!("{{ ServerId = \"{}\" }}", b.v6))
        .collect();
    let mut ifaces = vec![format!("\"{}\"", env.lab.client().lb_iface)];
    ifaces.extend(
        env.lab
            .backends()
            .iter()
            .map(|b| format!("\"{}\"", b.lb_iface)),
    );
    let text = format!(
        "[Agent]\nInterfaces = [{}]\nPinPath = \"{}\"\nFlowTableSize = 65536\n\n[[LoadBalancers]]\nLoadBalancerId = \"lb-6\"\nAddress = \"{}\"\nBackendServers = [{}]\n{}",
        ifaces.join(", "),
        env.pin,
        env.lab.vip_v6(),
        servers.join(", "),
        tcp_listener("Scheduler = \"tch\"\n", "")
    );
    let agent = env.start(config::parse(&text, "v6.toml")?)?;
    let vip = SocketAddr::new(IpAddr::V6(env.lab.vip_v6()), 80);
    let client = IpAddr::V6(env.lab.client().v6);
    let results = in_netns(
        &env.lab.client().ns,
        move || -> anyhow::Result<Vec<(String, SocketAddr)>> {
            (0..60)
                .map(|i| {
                    let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                        .with_context(|| format!("connection {i} of 60"))?;
                    greeting(&s)
                })
                .collect()
        },
    )??;
    let mut names = std::collections::BTreeSet::new();
    for (name, peer) in &results {
        assert_eq!(peer.ip(), client, "backend saw {peer}");
        names.insert(name.clone());
    }
    assert_eq!(
        names.len(),
        3,
        "60 distinct 4-tuples all hashed to {names:?}"
    );
    env.stop(agent);
    Ok(())
}

/// B12.3: an established TCP connection idle for `EstablishedTimeout` is closed with a RST to
/// the client and to the backend, and its flow is forgotten.
#[test]
fn idle_established_flow_is_reset_on_both_ends() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let env = Env::up("idle", 66, 1)?;
    let cfg = env.config(&format!(
        "{}{}",
        env.backend_servers(&[100]),
        tcp_listener("", "EstablishedTimeout = 10\n")
    ))?;
    let mut agent = env.start(cfg)?;
    let vip = SocketAddr::new(IpAddr::V4(env.lab.vip_v4()), 80);
    let conn = in_netns(
        &env.lab.client().ns,
        move || -> anyhow::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
            greeting(&s)?;
            Ok(s)
        },
    )??;
    assert_eq!(agent.reap()?, 0, "a fresh flow was reaped");
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(agent.reap()?, 1, "the idle flow was not reaped");
    let mut conn = conn;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 16];
    let err = conn
        .read(&mut buf)
        .expect_err("the client connection is still open");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let ss = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &env.lab.backends()[0].ns,
            "ss",
            "-Htn",
            "state",
            "established",
        ])
        .output()?;
    let open = String::from_utf8_lossy(&ss.stdout).to_string();
    assert!(
        !open.contains(":8080"),
        "backend still has the connection: {open}"
    );
    assert_eq!(agent.sync.maps.flows.keys().count(), 0);
    env.stop(agent);
    Ok(())
}
