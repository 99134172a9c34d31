//! `cargo xtask build-and-load`: the agent in the demo lab, or on a real interface.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::RecvTimeoutError,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use xtask::{
    cmd,
    lab::{self, Lab, Service},
};

use crate::{
    agent::{unload, Agent},
    exit_like, OwnedDir, Workspace,
};

/// Relative to the workspace root.
const DEMO_CONFIG: &str = "xtask/demo/slb.toml";
/// The lab the demo config is written for: namespaces `slb-lb`, `slb-client`, `slb-b1..3`,
/// addresses `10.77.*` and `fd77:77:*`.
const PREFIX: &str = "slb";
const N: u8 = 77;
const BACKENDS: usize = 3;
/// The demo config's `BackendServerPort`s.
const BACKEND_TCP_PORT: u16 = 8080;
const BACKEND_UDP_PORT: u16 = 5353;
const BACKEND_HTTP_PORT: u16 = 8081;
/// The name in the demo HTTPS listener's certificate (`xtask/demo/demo-cert.pem`).
const DEMO_HOST: &str = "demo.slb.example";
/// How long the agent may take to print `slb ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `slb serve` on a real interface in the foreground and exits with its status.
pub fn serve_on_iface(
    slb: &Path,
    config: &Path,
    iface: &str,
    xdp_mode: Option<&str>,
) -> Result<()> {
    let mut serve = Command::new(slb);
    serve
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--iface", iface]);
    if let Some(mode) = xdp_mode {
        serve.args(["--xdp-mode", mode]);
    }
    // Ctrl-C reaches the agent too (same process group); xtask just waits to report its status.
    crate::interrupted()?;
    let status = serve
        .status()
        .with_context(|| format!("running `{}`", cmd::display(&serve)))?;
    exit_like(status)
}

/// The demo: lab up, toy services on the backends, agent in the LB namespace, until Ctrl-C.
pub fn run(ws: &Workspace, slb: &Path) -> Result<()> {
    // Installed before anything is created, so that Ctrl-C always goes through the cleanup.
    let interrupted = crate::interrupted()?;
    let config = ws.root.join(DEMO_CONFIG);
    let (pin_path, keys) = demo_paths(&config)?;
    let pins = OwnedDir(pin_path);
    // A crashed earlier demo may have left pinned maps that the agent would pick up again.
    pins.remove()?;
    let state = OwnedDir(
        keys.parent()
            .context("KeysFile has a directory")?
            .to_path_buf(),
    );
    // A fresh store, seeded from the demo config, and a fresh key.
    state.remove()?;
    write_demo_key(&keys)?;
    let lab = Lab::up(PREFIX, N, BACKENDS)?;
    let services = start_services(&lab)?;

    let mut agent = Agent::start(slb, &config, lab.lb_ns(), true, false)?;
    let outcome = supervise(&mut agent, &interrupted, &lab, slb, &pins.0, &keys);

    // Teardown order matters: the agent stops first; `slb unload` then detaches the XDP
    // programs it leaves running (by design it keeps forwarding across restarts) and removes
    // its pins; the services' sockets must be gone for the namespaces to disappear.
    let stopped = agent.stop();
    // What it said while shutting down (best effort: the relay threads may still be reading).
    for line in agent.lines.try_iter() {
        println!("slb: {line}");
    }
    let unloaded = unload(slb, lab.lb_ns(), &pins.0);
    drop(services);
    // Whatever `slb unload` left (or everything, if it failed).
    let unpinned = pins.remove().and(state.remove());
    let lab_down = lab.down().context("tearing the lab down");
    println!("demo stopped and cleaned up");
    outcome
        .and(stopped)
        .and(unloaded)
        .and(unpinned)
        .and(lab_down)
}

/// Waits for `slb ready`, prints how to try the demo, then relays the agent's output until
/// Ctrl-C or until the agent exits on its own (an error).
fn supervise(
    agent: &mut Agent,
    interrupted: &AtomicBool,
    lab: &Lab,
    slb: &Path,
    pin_path: &Path,
    keys: &Path,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut early_output = Vec::new();
    let mut ready = false;
    loop {
        match agent.lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if ready => println!("slb: {line}"),
            Ok(line) => {
                ready = line.starts_with("slb ready");
                if ready {
                    println!("slb: {line}");
                    print_try_it(lab, slb, pin_path, keys);
                }
                early_output.push(line);
            }
            // Disconnected: the agent closed its output, so `try_wait` below sees it exit.
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        if interrupted.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(status) = agent.child.try_wait().context("waiting for the agent")? {
            // Whatever it printed last explains why.
            early_output.extend(agent.lines.try_iter());
            bail!(
                "the agent exited ({status}){}:\n{}",
                if ready { "" } else { " before it was ready" },
                early_output.join("\n")
            );
        }
        if !ready && Instant::now() > deadline {
            bail!(
                "the agent did not print `slb ready` within {} s; its output so far:\n{}",
                READY_TIMEOUT.as_secs(),
                early_output.join("\n")
            );
        }
    }
}

fn print_try_it(lab: &Lab, slb: &Path, pin_path: &Path, keys: &Path) {
    let client = &lab.client().ns;
    let (vip4, vip6) = (lab.vip_v4(), lab.vip_v6());
    let slb = shown(slb);
    println!(
        "HTTP: ip netns exec {client} curl -s http://{vip4}:8000/  \
         HTTPS (HTTP/2): ip netns exec {client} curl -sk --resolve {DEMO_HOST}:443:{vip4} https://{DEMO_HOST}/"
    );
    println!(
        "demo up: ip netns exec {client} nc -w1 {vip4} 80 </dev/null  (TCP; also: \
         echo hi | ip netns exec {client} nc -u -w1 {vip4} 53, \
         ip netns exec {client} nc -w1 {vip6} 80 </dev/null; \
         stats: {} stats --pin-path {}); Ctrl-C to stop",
        slb.display(),
        pin_path.display()
    );
    println!(
        "API: ip netns exec {lb} {} call DescribeLoadBalancers --keys-file {} --RegionId local  \
         (also `export`, `apply FILE --dry-run`, any SLB action; Alibaba SDKs work against \
         http://127.0.0.1:8600 inside {lb})",
        slb.display(),
        keys.display(),
        lb = lab.lb_ns(),
    );
}

/// A fresh demo access key, readable by root only (as the agent requires).
fn write_demo_key(path: &Path) -> Result<()> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path.parent().context("KeysFile has a directory")?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut secret = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("reading /dev/urandom")?;
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            writeln!(
                f,
                "[[AccessKeys]]\nAccessKeyId = \"demo\"\nAccessKeySecret = \"{secret}\""
            )
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// `path` relative to the current directory when it is below it, for a shorter hint.
fn shown(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Each backend answers TCP and UDP on v4 and v6, and HTTP on v4, named `b<i>` so replies show
/// who answered.
fn start_services(lab: &Lab) -> Result<Vec<Service>> {
    let mut services = Vec::new();
    for (i, backend) in lab.backends().iter().enumerate() {
        let name = format!("b{}", i + 1);
        for ip in [backend.v4.into(), backend.v6.into()] {
            let tcp = SocketAddr::new(ip, BACKEND_TCP_PORT);
            let udp = SocketAddr::new(ip, BACKEND_UDP_PORT);
            services.push(lab::spawn_tcp_service(&backend.ns, tcp, &name)?);
            services.push(lab::spawn_udp_service(&backend.ns, udp, &name)?);
        }
        let http = SocketAddr::new(backend.v4.into(), BACKEND_HTTP_PORT);
        services.push(lab::spawn_http_service(&backend.ns, http, &name)?);
    }
    Ok(services)
}

/// The paths in the demo config that the demo prepares and removes: `Agent.PinPath` and
/// `Api.KeysFile`.
fn demo_paths(config: &Path) -> Result<(PathBuf, PathBuf)> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let path = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_str)
            .map(PathBuf::from)
            .with_context(|| format!("{} sets no {section}.{key}", config.display()))
    };
    Ok((path("Agent", "PinPath")?, path("Api", "KeysFile")?))
}
