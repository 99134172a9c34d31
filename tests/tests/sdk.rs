//! Clients nobody here wrote: the official Alibaba Cloud Python SDK for SLB 2014-05-15
//! (`alibabacloud-slb20140515`, signature V3) and the older `aliyun-python-sdk-slb`
//! (signature 1.0) drive a real `slb serve` with an `[Api]` section in a namespace lab. Each
//! creates an instance, a VServerGroup, backends, TCP and UDP listeners and starts them; traffic
//! from the client namespace then goes through the XDP path to the backends; then the SDK
//! deletes the instance and the traffic stops. `cargo xtask setup` installs the SDKs into
//! `~/.cache/slb/venv`.
use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;
use tests::api::LabAgent;
use xtask::lab::{in_netns, netns_command, spawn_tcp_service, spawn_udp_service, Lab};

const LAB: u8 = 67;
const API_PORT: u16 = 18_667;
const REGION: &str = "cn-sdk";

fn sdk_python() -> anyhow::Result<PathBuf> {
    let home = std::env::var("HOME").context("HOME")?;
    let py = PathBuf::from(home).join(".cache/slb/venv/bin/python");
    if !py.exists() {
        bail!(
            "{} is missing: `cargo xtask setup` installs the SDKs",
            py.display()
        );
    }
    Ok(py)
}

fn run_sdk(lab: &Lab, script: &str, backends: &str, delete: Option<&str>) -> anyhow::Result<Value> {
    let py = sdk_python()?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sdk")
        .join(script);
    let mut cmd = netns_command(lab.lb_ns(), py);
    cmd.arg(&script).args([
        &format!("127.0.0.1:{API_PORT}"),
        "sdkid",
        "sdksecret",
        REGION,
        backends,
    ]);
    if let Some(id) = delete {
        cmd.env("DELETE", id);
    }
    let out = cmd.output().context("running the SDK script")?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(last)?)
}

/// TCP greetings `<backend> <peer>` from `count` connections, and one UDP echo.
fn traffic(
    lab: &Lab,
    vip: IpAddr,
    count: usize,
) -> anyhow::Result<(Vec<(String, String)>, String)> {
    let client = lab.client().ns.clone();
    in_netns(
        &client,
        move || -> anyhow::Result<(Vec<(String, String)>, String)> {
            let mut greetings = Vec::new();
            for _ in 0..count {
                let s =
                    TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                let (name, peer) = line.trim().split_once(' ').context("greeting")?;
                greetings.push((name.to_string(), peer.to_string()));
            }
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.set_read_timeout(Some(Duration::from_secs(2)))?;
            u.send_to(b"ping", SocketAddr::new(vip, 53))?;
            let mut buf = [0u8; 256];
            let n = u.recv(&mut buf)?;
            Ok((greetings, String::from_utf8_lossy(&buf[..n]).into_owned()))
        },
    )?
}

fn tcp_refused(lab: &Lab, vip: IpAddr) -> anyhow::Result<bool> {
    let client = lab.client().ns.clone();
    in_netns(&client, move || {
        TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_millis(500)).is_err()
    })
}

#[test]
fn official_and_legacy_sdks_drive_the_xdp_path() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: needs root for namespaces and XDP");
        return Ok(());
    }
    let lab = Lab::up("slbsdk", LAB, 2)?;
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
    }
    let agent = LabAgent::new(&lab, "sdk")?;
    let keys = agent.keys("sdkid", "sdksecret")?;
    let serve = agent.start(&format!(
        "RegionId = \"{REGION}\"\n\n\
         [Api]\nListen = \"127.0.0.1:{API_PORT}\"\nKeysFile = \"{}\"\nStatePath = \"{}\"\nVipPool = [\"{}/32\"]\n",
        keys.display(),
        agent.dir.join("state.redb").display(),
        lab.vip_v4()
    ))?;
    let backends: Vec<String> = lab.backends().iter().map(|b| b.v4.to_string()).collect();
    let backends = backends.join(",");
    let vip = IpAddr::V4(lab.vip_v4());
    let client_ip = lab.client().v4.to_string();
    for script in ["official_v3.py", "legacy_v1.py"] {
        let started = Instant::now();
        let created = run_sdk(&lab, script, &backends, None)?;
        assert_eq!(created["Address"], vip.to_string(), "{script}: {created}");
        let id = created["LoadBalancerId"]
            .as_str()
            .context("LoadBalancerId")?
            .to_string();
        let (greetings, echo) = traffic(&lab, vip, 20)?;
        let names: std::collections::BTreeSet<&str> =
            greetings.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names.len(),
            2,
            "{script}: wrr over both backends: {greetings:?}"
        );
        // B12.1: the backend sees the client's address.
        assert!(
            greetings
                .iter()
                .all(|(_, peer)| peer.starts_with(&format!("{client_ip}:"))),
            "{script}: {greetings:?}"
        );
        // The UDP service answers `<backend> <peer>`: through XDP, with the client's address.
        assert!(
            echo.starts_with('b') && echo.contains(&format!(" {client_ip}:")),
            "{script}: UDP reply {echo:?}"
        );
        eprintln!(
            "{script}: configured and forwarding after {:?}",
            started.elapsed()
        );
        run_sdk(&lab, script, &backends, Some(&id))?;
        // Deleting the instance removes its listeners from the data plane within a second.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !tcp_refused(&lab, vip)? {
            if Instant::now() > deadline {
                bail!("{script}: the deleted instance still forwards");
            }
        }
    }
    drop(serve);
    drop(agent);
    drop(services);
    lab.down()?;
    Ok(())
}
