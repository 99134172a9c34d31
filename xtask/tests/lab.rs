//! The lab on its own, before any XDP: the LB namespace forwards with the ordinary kernel stack,
//! so the client must reach every backend (v4 and v6, TCP and UDP) and the VIPs on the LB.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use xtask::lab::{self, Lab};

/// Lab number reserved for this test (the `tests` crate uses others), so it can run in
/// parallel with them.
const N: u8 = 250;
const TIMEOUT: Duration = Duration::from_secs(5);

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs `ip` (iproute2)");
    }
    None
}

/// From the client namespace: opens a TCP connection, returns the greeting line, and checks
/// that the connection echoes.
fn tcp_hello(ns: &str, to: SocketAddr) -> Result<String> {
    lab::in_netns(ns, move || -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        stream.write_all(b"still there?\n")?;
        let mut echo = String::new();
        reader.read_line(&mut echo)?;
        ensure!(echo == "still there?\n", "echo from {to}: {echo:?}");
        Ok(greeting)
    })?
    .with_context(|| format!("TCP to {to} from {ns}"))
}

fn udp_hello(ns: &str, to: SocketAddr) -> Result<String> {
    lab::in_netns(ns, move || -> Result<String> {
        let any: IpAddr = if to.is_ipv4() {
            [0u8; 4].into()
        } else {
            [0u8; 16].into()
        };
        let socket = UdpSocket::bind((any, 0))?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket.send_to(b"hi", to)?;
        let mut buf = [0u8; 256];
        let (len, from) = socket.recv_from(&mut buf)?;
        ensure!(from == to, "reply from {from}, expected {to}");
        Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
    })?
    .with_context(|| format!("UDP to {to} from {ns}"))
}

#[test]
fn client_reaches_backends_and_vips_through_lb_then_teardown_is_complete() -> Result<()> {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping: {reason}");
        return Ok(());
    }
    let prefix = format!("slbt{N}");
    let lab = Lab::up(&prefix, N, 2)?;
    assert_eq!(lab.lb_ifaces(), ["cl0", "be1", "be2"]);
    assert_eq!(lab.vip_v6().to_string(), "fd77:250:100::1");
    let client = lab.client().clone();

    for (i, backend) in lab.backends().iter().enumerate() {
        let name = format!("b{}", i + 1);
        for (ip, client_ip) in [
            (IpAddr::from(backend.v4), IpAddr::from(client.v4)),
            (backend.v6.into(), client.v6.into()),
        ] {
            let tcp = lab::spawn_tcp_service(&backend.ns, SocketAddr::new(ip, 8080), &name)?;
            let greeting = tcp_hello(&client.ns, tcp.local_addr())?;
            // Plain forwarding: the backend sees the client's own address.
            let peer = tcp.peers()[0];
            assert_eq!(peer.ip(), client_ip);
            assert_eq!(greeting, format!("{name} {peer}\n"));

            let udp = lab::spawn_udp_service(&backend.ns, SocketAddr::new(ip, 5353), &name)?;
            let reply = udp_hello(&client.ns, udp.local_addr())?;
            let peer = udp.peers()[0];
            assert_eq!(peer.ip(), client_ip);
            assert_eq!(reply, format!("{name} {peer}\n"));
        }
    }

    // The VIPs are local addresses of the LB namespace, reached via the client's default route.
    for vip in [IpAddr::from(lab.vip_v4()), lab.vip_v6().into()] {
        let svc = lab::spawn_tcp_service(lab.lb_ns(), SocketAddr::new(vip, 80), "lb")?;
        let greeting = tcp_hello(&client.ns, svc.local_addr())?;
        assert!(greeting.starts_with("lb "), "{greeting:?}");
    }

    // Offloads the XDP data path relies on, on both ends of every veth.
    for e in lab.endpoints() {
        for (ns, iface) in [
            (lab.lb_ns(), e.lb_iface.as_str()),
            (e.ns.as_str(), e.iface.as_str()),
        ] {
            let features = xtask::cmd::output(
                Command::new("nsenter")
                    .arg(format!("--net={}", lab::netns_path(ns).display()))
                    .args(["ethtool", "-k", iface]),
            )?;
            assert!(
                features.contains("generic-receive-offload: on"),
                "{ns}/{iface}"
            );
            assert!(features.contains("tx-checksumming: off"), "{ns}/{iface}");
        }
    }

    let namespaces: Vec<String> = lab.namespaces().iter().map(|s| s.to_string()).collect();
    assert_eq!(namespaces.len(), 4);
    lab.down()?;
    let listed = xtask::cmd::output(Command::new("ip").args(["netns", "list"]))?;
    for ns in &namespaces {
        assert!(!lab::netns_path(ns).exists(), "{ns} left behind");
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} listed"
        );
    }
    Ok(())
}
