//! A load-balancer lab made of network namespaces and veth pairs, shared by the demo
//! (`cargo xtask build-and-load`) and the end-to-end tests.
//!
//! ```text
//!  <p>-client                 <p>-lb                                  <p>-b<i>
//!  eth0 10.<n>.0.2/24   ◄──►  cl0 10.<n>.0.1/24    be<i> 10.<n>.<i>.1/24      ◄──►  eth0 10.<n>.<i>.2/24
//!       fd77:<n>::2/64            fd77:<n>::1/64         fd77:<n>:<i>::1/64            fd77:<n>:<i>::2/64
//!                             lo  10.<n>.100.1/32, fd77:<n>:100::1/128  (the VIPs)
//! ```
//!
//! The client and every backend route everything via the LB, so in `nat` mode the backends'
//! replies come back through it. The client reaches the VIPs through its default route, so it
//! only ever resolves the LB's own `cl0` addresses (ARP/ND), never the VIPs themselves; putting
//! the VIPs on `lo` is enough. `<n>` is written into the IPv6 group as the same digits
//! (`n = 77` gives `fd77:77::`) so the v4 and v6 plans read alike; any `u8` is a valid group.
//!
//! Several labs can exist at once (tests run in parallel): give each its own prefix and `<n>`.
//! Interface names are fixed (`cl0`, `be<i>`, `eth0`) because each lives in its lab's namespaces.
use std::{
    ffi::OsStr,
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

use crate::cmd;

/// Backend `<i>` uses subnet `10.<n>.<i>.0/24`; `10.<n>.100.0` holds the VIPs, so stay below it.
pub const MAX_BACKENDS: usize = 99;

/// The LB's interface towards the client.
pub const LB_CLIENT_IFACE: &str = "cl0";

/// How often service threads look at their stop flag while idle: bounds how long dropping a
/// [`Service`] takes.
const POLL: Duration = Duration::from_millis(50);

/// One namespace on the far side of a veth pair from the LB: the client or a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Namespace name, bound at `/run/netns/<ns>`.
    pub ns: String,
    /// Its interface towards the LB (always `eth0`).
    pub iface: String,
    /// The LB's interface towards it (`cl0`, `be<i>`).
    pub lb_iface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The LB's addresses on that link, which are the endpoint's default gateways.
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
}

/// A running lab. Dropping it tears everything down (errors ignored); [`Lab::down`] reports them.
#[derive(Debug)]
pub struct Lab {
    n: u8,
    lb_ns: String,
    client: Endpoint,
    backends: Vec<Endpoint>,
}

impl Lab {
    /// Creates the namespaces `<prefix>-lb`, `<prefix>-client` and `<prefix>-b1..` with
    /// `backends` backends, after removing whatever a previous run left under those names.
    pub fn up(prefix: &str, n: u8, backends: usize) -> Result<Lab> {
        if !(1..=MAX_BACKENDS).contains(&backends) {
            bail!("a lab has 1..={MAX_BACKENDS} backends, not {backends}");
        }
        let lab = Lab::plan(prefix, n, backends);
        // A crashed run leaves namespaces behind; `ip netns add` would then fail on them.
        lab.remove_namespaces()
            .context("removing a previous lab with the same names")?;
        // On error `lab` is dropped here, which removes whatever was already created.
        lab.build()
            .with_context(|| format!("bringing lab `{prefix}` (n = {n}) up"))?;
        Ok(lab)
    }

    /// Tears the lab down, reporting failures (dropping it does the same silently).
    pub fn down(self) -> Result<()> {
        self.remove_namespaces()
    }

    fn plan(prefix: &str, n: u8, backends: usize) -> Lab {
        let endpoint = |ns: String, lb_iface: String, subnet: u8| Endpoint {
            ns,
            iface: "eth0".to_string(),
            lb_iface,
            v4: Ipv4Addr::new(10, n, subnet, 2),
            v6: v6(n, subnet, 2),
            gateway_v4: Ipv4Addr::new(10, n, subnet, 1),
            gateway_v6: v6(n, subnet, 1),
        };
        Lab {
            n,
            lb_ns: format!("{prefix}-lb"),
            client: endpoint(format!("{prefix}-client"), LB_CLIENT_IFACE.to_string(), 0),
            backends: (1..=backends)
                .map(|i| {
                    let subnet = u8::try_from(i).expect("i <= MAX_BACKENDS fits in u8");
                    endpoint(format!("{prefix}-b{i}"), format!("be{i}"), subnet)
                })
                .collect(),
        }
    }

    /// The lab number `<n>` in all its addresses.
    pub fn n(&self) -> u8 {
        self.n
    }

    /// The load balancer's namespace.
    pub fn lb_ns(&self) -> &str {
        &self.lb_ns
    }

    pub fn client(&self) -> &Endpoint {
        &self.client
    }

    /// Backends in order: `backends()[0]` is `b1` behind `be1`.
    pub fn backends(&self) -> &[Endpoint] {
        &self.backends
    }

    /// The client and the backends.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        std::iter::once(&self.client).chain(&self.backends)
    }

    /// The LB's interfaces, `cl0` first: what the agent attaches XDP to.
    pub fn lb_ifaces(&self) -> Vec<&str> {
        self.endpoints().map(|e| e.lb_iface.as_str()).collect()
    }

    /// Every namespace of the lab, the LB's first.
    pub fn namespaces(&self) -> Vec<&str> {
        std::iter::once(self.lb_ns.as_str())
            .chain(self.endpoints().map(|e| e.ns.as_str()))
            .collect()
    }

    pub fn vip_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.n, 100, 1)
    }

    pub fn vip_v6(&self) -> Ipv6Addr {
        v6(self.n, 100, 1)
    }

    fn build(&self) -> Result<()> {
        for ns in self.namespaces() {
            cmd::run(Command::new("ip").args(["netns", "add", ns]))?;
            ip(ns, &["link", "set", "lo", "up"])?;
        }
        // Interfaces copy `default` when they are created (or moved into a namespace), so
        // setting it before the veths exist covers every interface.
        // Without duplicate address detection every v6 address, link-local ones included, is
        // usable as soon as its link is up: while the LB's link-local address is tentative the
        // kernel sends no neighbour solicitation for a packet it forwards, so the first
        // connection through XDP would wait ~2 s for its backend's MAC.
        for ns in self.namespaces() {
            set_sysctls(
                ns,
                &[
                    ("net/ipv6/conf/all/accept_dad", "0"),
                    ("net/ipv6/conf/default/accept_dad", "0"),
                ],
            )?;
        }
        // The effective rp_filter is max(all, <iface>); strict reverse-path filtering would
        // drop the asymmetric flows that XDP NAT creates.
        set_sysctls(
            &self.lb_ns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ],
        )?;
        // One queue per CPU on every veth end: a veth hands frames that its peer sends with
        // XDP to the receive queue of the sending CPU, so with one queue all CPUs would feed one
        // ring drained by one CPU's NAPI, and frames would be dropped while the other CPU idles.
        let queues = thread::available_parallelism()
            .map_or(1, usize::from)
            .to_string();
        let queues = ["numtxqueues", &queues, "numrxqueues", &queues];
        for e in self.endpoints() {
            let lb = self.lb_ns.as_str();
            let (lb_if, ep_if) = (e.lb_iface.as_str(), e.iface.as_str());
            let mut add = vec!["link", "add", lb_if];
            add.extend(queues);
            add.extend(["type", "veth", "peer", "name", ep_if]);
            add.extend(queues);
            add.extend(["netns", &e.ns]);
            ip(lb, &add)?;
            ip(
                lb,
                &["addr", "add", &format!("{}/24", e.gateway_v4), "dev", lb_if],
            )?;
            ip(
                lb,
                &["addr", "add", &format!("{}/64", e.gateway_v6), "dev", lb_if],
            )?;
            ip(
                &e.ns,
                &["addr", "add", &format!("{}/24", e.v4), "dev", ep_if],
            )?;
            ip(
                &e.ns,
                &["addr", "add", &format!("{}/64", e.v6), "dev", ep_if],
            )?;
            tune_veth(lb, lb_if)?;
            tune_veth(&e.ns, ep_if)?;
            ip(lb, &["link", "set", lb_if, "up"])?;
            ip(&e.ns, &["link", "set", ep_if, "up"])?;
            ip(
                &e.ns,
                &["route", "add", "default", "via", &e.gateway_v4.to_string()],
            )?;
            ip(
                &e.ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &e.gateway_v6.to_string(),
                ],
            )?;
        }
        ip(
            &self.lb_ns,
            &["addr", "add", &format!("{}/32", self.vip_v4()), "dev", "lo"],
        )?;
        ip(
            &self.lb_ns,
            &[
                "addr",
                "add",
                &format!("{}/128", self.vip_v6()),
                "dev",
                "lo",
            ],
        )?;
        Ok(())
    }

    /// Deletes the namespaces that exist; each one's veth ends (and so their peers) go with it.
    fn remove_namespaces(&self) -> Result<()> {
        let mut first_error = None;
        for ns in self.namespaces() {
            if netns_path(ns).exists() {
                if let Err(e) = cmd::run(Command::new("ip").args(["netns", "del", ns])) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Drop cannot report errors; callers that care use `down`, after which this finds
        // nothing left to delete.
        let _ = self.remove_namespaces();
    }
}

/// `fd77:<n>:<subnet>::<host>`, with `n` and `subnet` written as the same digits as in v4.
fn v6(n: u8, subnet: u8, host: u16) -> Ipv6Addr {
    let group = |x: u8| {
        u16::from_str_radix(&x.to_string(), 16).expect("decimal digits of a u8 parse as hex")
    };
    Ipv6Addr::new(0xfd77, group(n), group(subnet), 0, 0, 0, 0, host)
}

/// Where `ip netns add` binds a namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// `program` in the network namespace `ns` only, by nsenter: unlike `ip netns exec`, it keeps
/// the host's mount namespace, so /sys (and the BPF pins under /sys/fs/bpf) are the host's.
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(ns).display()))
        .arg(program);
    c
}

/// `ip -n <ns> <args>`.
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    cmd::run(Command::new("ip").args(["-n", ns]).args(args))
}

/// veth offloads for XDP on both ends:
/// * GRO on gives the veth NAPI even without an XDP program of its own, which it needs to
///   receive frames that an XDP program on its peer sends with `XDP_TX` / `XDP_REDIRECT`;
/// * tx checksum offload off, so that packets leave with complete checksums which XDP can
///   update incrementally (with it on, veth passes partial checksums along).
fn tune_veth(ns: &str, iface: &str) -> Result<()> {
    cmd::run(netns_command(ns, "ethtool").args(["-K", iface, "gro", "on", "tx", "off"]))
        .context("tuning veth offloads (is ethtool installed? `cargo xtask setup` installs it)")
}

/// Writes sysctls (`net/ipv4/ip_forward` style keys) inside `ns`: /proc/sys/net shows the
/// namespace of the thread that opens it.
pub fn set_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    in_netns(ns, move || {
        settings.iter().try_for_each(|(key, value)| {
            std::fs::write(Path::new("/proc/sys").join(key), value)
                .with_context(|| format!("setting {key} = {value}"))
        })
    })?
    .with_context(|| format!("setting sysctls in {ns}"))
}

/// Runs `f` on a fresh thread that has entered the network namespace `/run/netns/<ns>`, and
/// returns its result. Sockets created by `f` belong to that namespace for their whole life, so
/// they can be handed back and used from any thread.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| anyhow!("the thread running in network namespace {ns} panicked"))?
}

/// Starts `f` on a fresh thread that enters the network namespace `/run/netns/<ns>` first.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let path = netns_path(ns);
    let netns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let ns_name = ns.to_string();
    thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || -> Result<T> {
            // setns(CLONE_NEWNET) only changes this thread; the thread ends with `f`, so no other
            // code ever runs in the wrong namespace.
            setns(&netns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {ns_name}"))?;
            Ok(f())
        })
        .context("spawning a thread")
}

/// A toy TCP or UDP service running on background threads. It answers every TCP connection or
/// UDP datagram with `<name> <peer>\n` (`<peer>` as `ip:port` or `[ip]:port`), and a TCP
/// connection then echoes whatever the client sends until EOF, so long-lived connections can be
/// tested. Stops when dropped.
#[derive(Debug)]
pub struct Service {
    local_addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every peer seen so far, in arrival order: one entry per TCP connection or UDP datagram.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.peers).clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in the service thread has nothing left to clean up; the test that cares
            // sees it as missing peers or replies.
            let _ = thread.join();
        }
    }
}

fn lock(peers: &Mutex<Vec<SocketAddr>>) -> std::sync::MutexGuard<'_, Vec<SocketAddr>> {
    // A panicking connection thread cannot leave the Vec half-updated (push is all or nothing).
    peers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a TCP [`Service`] listening on `bind` inside namespace `ns`.
pub fn spawn_tcp_service(ns: &str, bind: SocketAddr, name: &str) -> Result<Service> {
    spawn_stream_service(ns, bind, name, serve_tcp)
}

/// Starts an HTTP/1.1 [`Service`] on `bind` inside `ns`: every request gets `200` with the body
/// `<name> <peer>\n`, on keep-alive connections.
pub fn spawn_http_service(ns: &str, bind: SocketAddr, name: &str) -> Result<Service> {
    spawn_stream_service(ns, bind, name, serve_http)
}

/// `serve` runs per connection with the line `<name> <peer>\n`.
fn spawn_stream_service(
    ns: &str,
    bind: SocketAddr,
    name: &str,
    serve: fn(TcpStream, &str, &AtomicBool),
) -> Result<Service> {
    let listener = in_netns(ns, move || TcpListener::bind(bind))?
        .with_context(|| format!("binding TCP {bind} in {ns}"))?;
    // Non-blocking so the accept loop can notice the stop flag.
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (peers, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let thread = {
        let (peers, stop, name) = (Arc::clone(&peers), Arc::clone(&stop), name.to_string());
        thread::Builder::new()
            .name(format!("tcp {name}"))
            .spawn(move || tcp_accept_loop(&listener, &name, &peers, &stop, serve))?
    };
    Ok(Service {
        local_addr,
        peers,
        stop,
        thread: Some(thread),
    })
}

fn tcp_accept_loop(
    listener: &TcpListener,
    name: &str,
    peers: &Arc<Mutex<Vec<SocketAddr>>>,
    stop: &Arc<AtomicBool>,
    serve: fn(TcpStream, &str, &AtomicBool),
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                lock(peers).push(peer);
                let (stop, line) = (Arc::clone(stop), format!("{name} {peer}\n"));
                // A failed spawn just drops this connection; the client sees it closed.
                if let Ok(handle) =
                    thread::Builder::new().spawn(move || serve(stream, &line, &stop))
                {
                    connections.push(handle);
                }
            }
            // Transient accept errors (a client that already reset, fd pressure) are no reason
            // to stop serving; back off a little in either case.
            Err(_) => thread::sleep(POLL),
        }
        connections.retain(|c| !c.is_finished());
    }
    // Joined so that, once the Service is dropped, no socket of it is left in the namespace.
    for c in connections {
        let _ = c.join();
    }
}

fn serve_tcp(mut stream: TcpStream, line: &str, stop: &AtomicBool) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux, but say what this code relies on.
    // The read timeout lets the echo loop notice the stop flag.
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL)).is_err()
        || stream.write_all(line.as_bytes()).is_err()
    {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(len) => {
                if stream.write_all(&buf[..len]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn serve_http(mut stream: TcpStream, line: &str, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{line}",
        line.len()
    );
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        // Requests without bodies (what the demo's clients send), one answer per head.
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(len) => pending.extend_from_slice(&buf[..len]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Starts a UDP [`Service`] bound to `bind` inside namespace `ns`.
pub fn spawn_udp_service(ns: &str, bind: SocketAddr, name: &str) -> Result<Service> {
    let socket = in_netns(ns, move || UdpSocket::bind(bind))?
        .with_context(|| format!("binding UDP {bind} in {ns}"))?;
    // The timeout lets the receive loop notice the stop flag.
    socket.set_read_timeout(Some(POLL))?;
    let local_addr = socket.local_addr()?;
    let (peers, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let thread = {
        let (peers, stop, name) = (Arc::clone(&peers), Arc::clone(&stop), name.to_string());
        thread::Builder::new()
            .name(format!("udp {name}"))
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    // Errors are timeouts or ICMP errors reported for an earlier reply to a peer
                    // that went away; neither should stop the service.
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        lock(&peers).push(peer);
                        let _ = socket.send_to(format!("{name} {peer}\n").as_bytes(), peer);
                    }
                }
            })?
    };
    Ok(Service {
        local_addr,
        peers,
        stop,
        thread: Some(thread),
    })
}
