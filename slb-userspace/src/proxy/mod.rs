//! The layer-7 proxy (§9–§11): the agent serves HTTP and HTTPS listeners itself. XDP passes
//! their packets to the kernel stack after the ACL; the agent makes each such VIP a local
//! address (a `local` route on `lo`) and listens on VIP:port. Listeners start, change and stop
//! one by one: a changed listener keeps its socket and connections (new connections get the new
//! settings and certificates, open ones keep theirs), a stopped one stops accepting and lets its
//! in-flight requests finish. HTTPS speaks HTTP/2 when ALPN picks it (B9.17).
pub mod access;
pub mod backend;
pub mod bandwidth;
pub mod codec;
pub mod domain;
pub mod forward;
pub mod gzip;
pub mod h1;
pub mod pool;
pub mod rules;
pub mod steer;
pub mod sticky;
pub mod tls;

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslAcceptor};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};

use crate::{
    config::{
        Certificates, Config, GroupRef, HttpSettings, InstanceStatus, ListenerStatus, Member,
        Protocol, Scheduler,
    },
    health::Status,
};
use pool::Pool;

/// A client connection is closed after this many requests (B9.9).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100;

/// What a listener's requests need; replaced as a whole when the listener changes.
pub struct Route {
    /// `<LoadBalancerId>/<protocol>/<port>`, for logs and metrics.
    pub name: Arc<str>,
    pub load_balancer_id: String,
    pub vip: IpAddr,
    pub listener_port: u16,
    pub scheme: &'static str,
    pub http: HttpSettings,
    /// The listener's own group.
    pub pool: Pool,
    /// The group of each forwarding rule, in `http.rules` order.
    pub rule_pools: Vec<Pool>,
    /// HTTPS: the TLS server side new connections get.
    pub tls: Option<Arc<SslAcceptor>>,
    /// `Bandwidth` (B13.2); `None` is `-1`, no cap.
    pub bandwidth: Option<Arc<bandwidth::Bucket>>,
    health: Arc<Status>,
}

impl Route {
    /// Weight above 0 and not abnormal; with `HealthCheck=off` nothing is checked and every
    /// member counts as healthy (B8.2).
    pub fn usable(&self, m: &Member) -> bool {
        m.weight > 0
            && self.health.healthy(
                &self.load_balancer_id,
                self.listener_port,
                SocketAddr::new(m.addr, m.port),
            ) != Some(false)
    }

    /// The pool of forwarding rule `rule`, or the listener's own (B11.4).
    pub fn pool(&self, rule: Option<usize>) -> &Pool {
        rule.and_then(|r| self.rule_pools.get(r))
            .unwrap_or(&self.pool)
    }
}

/// What a worker's listeners share: its backend connections, its request counters and its
/// state for the worker picker.
pub struct Shared {
    pub backends: Arc<backend::Backends>,
    pub metrics: Arc<access::Shard>,
    pub load: Option<Arc<steer::Load>>,
}

/// A thread with a single-threaded runtime of its own that accepts on every listener, as an
/// nginx worker does. A client connection, its requests and the backend connections they use
/// stay on one thread: no request wakes another thread or moves a task between cores.
struct Worker {
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    /// Dropped to end the worker.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(
        index: usize,
        metrics: Arc<access::Shard>,
        load: Option<Arc<steer::Load>>,
    ) -> std::io::Result<Worker> {
        let mut rt = tokio::runtime::Builder::new_current_thread();
        rt.enable_all();
        if let Some(load) = &load {
            let (parked, unparked) = (load.clone(), load.clone());
            rt.on_thread_park(move || parked.set_parked(true))
                .on_thread_unpark(move || unparked.set_parked(false));
        }
        let rt = rt.build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("slb-proxy-{index}"))
            .spawn(move || {
                if let Err(e) = short_slice() {
                    log::debug!("proxy worker {index} keeps the default scheduler slice: {e}");
                }
                let _ = rt.block_on(stopped);
            })?;
        Ok(Worker {
            handle,
            shared: Arc::new(Shared {
                backends: Arc::default(),
                metrics,
                load,
            }),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The scheduler slice a proxy worker asks for: about one round of a busy worker over its ready
/// connections (some 20 requests). The kernel's default, 0.75 ms times 1 + log2(CPUs), lets a
/// worker woken by a packet wait behind whatever else shares its core for that long; where the
/// load generator and the backend shared two cores with the proxy (`cargo xtask bench l7`), HTTPS
/// keep-alive p99 was 12 % lower with this slice and throughput per CPU-second unchanged.
/// The share of CPU time is not changed, only how soon a woken worker runs.
const WORKER_SLICE: Duration = Duration::from_micros(300);

/// Asks for [`WORKER_SLICE`] for the calling thread (Linux 6.12 and later honour
/// `sched_attr.sched_runtime` for normal threads; older kernels ignore it), keeping its nice
/// value.
fn short_slice() -> std::io::Result<()> {
    // The kernel's struct sched_attr, first version.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: a plain query of the calling thread (0) that returns its nice value; errno is
    // reset first because -1 is a valid answer.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let errno = std::io::Error::last_os_error();
    if nice == -1 && errno.raw_os_error() != Some(0) {
        return Err(errno);
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: WORKER_SLICE.as_nanos() as u64,
        deadline: 0,
        period: 0,
    };
    // SAFETY: the attribute is a live, fully initialised struct of the size it declares.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The inputs a listener's route is built from: a change in any rebuilds it. Health check
/// settings are not among them: verdicts are read per request.
#[derive(PartialEq)]
struct RouteInputs {
    load_balancer_id: String,
    protocol: Protocol,
    listener_port: u16,
    scheduler: Scheduler,
    http: HttpSettings,
    members: Vec<Member>,
    rule_members: Vec<Vec<Member>>,
    bandwidth: Option<u32>,
    /// The certificates an HTTPS listener uses; a replaced one rebuilds the TLS side.
    certs: Certificates,
}

struct Served {
    inputs: RouteInputs,
    route: watch::Sender<Arc<Route>>,
    /// One per worker: a connection waiting for its next request watches it, and a channel
    /// shared by the workers would move its lock between their cores on every request.
    stop: Vec<watch::Sender<bool>>,
}

impl Served {
    fn stop(&self) {
        for stop in &self.stop {
            let _ = stop.send(true);
        }
    }
}

/// The HTTP and HTTPS listeners being served.
pub struct Proxy {
    health: Arc<Status>,
    metrics: Arc<access::Metrics>,
    /// `None` where the picker could not be loaded: the kernel hashes new connections.
    steering: Option<steer::Steering>,
    workers: Vec<Worker>,
    served: HashMap<SocketAddr, Served>,
    /// VIPs this agent made local.
    local: BTreeSet<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("starting proxy worker {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
    #[error("making {vip} a local address: {detail}")]
    LocalRoute { vip: IpAddr, detail: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS of {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: tls::TlsError,
    },
}

/// The certificates `http`'s TLS side names.
fn used_certificates(http: &HttpSettings, all: &Certificates) -> Certificates {
    let mut used = Certificates::default();
    let Some(tls) = &http.tls else { return used };
    let server_ids = std::iter::once(&tls.server_certificate_id).chain(
        tls.domain_extensions
            .iter()
            .map(|e| &e.server_certificate_id),
    );
    for id in server_ids {
        if let Some(c) = all.server.get(id) {
            used.server.insert(id.clone(), c.clone());
        }
    }
    if let Some(id) = &tls.ca_certificate_id {
        if let Some(c) = all.ca.get(id) {
            used.ca.insert(id.clone(), c.clone());
        }
    }
    used
}

impl Proxy {
    /// Starts one worker per core.
    pub fn new(health: Arc<Status>) -> Result<Proxy, ProxyError> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shards: Vec<Arc<access::Shard>> = (0..cores).map(|_| Arc::default()).collect();
        let steering = steer::Steering::load(cores)
            .inspect_err(|e| {
                log::warn!("{e}; the kernel spreads new connections over the proxy workers")
            })
            .ok();
        let loads: Vec<Arc<steer::Load>> = steering
            .iter()
            .flat_map(|s| (0..cores).map(|w| Arc::new(s.load_of(w))))
            .collect();
        let workers = shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                Worker::start(index, shard.clone(), loads.get(index).cloned())
                    .map_err(|source| ProxyError::Worker { index, source })
            })
            .collect::<Result<_, _>>()?;
        let metrics = Arc::new(access::Metrics::new(shards, loads));
        Ok(Proxy {
            health,
            metrics,
            steering,
            workers,
            served: HashMap::new(),
            local: BTreeSet::new(),
        })
    }

    /// Request counters of every listener (`GET /metrics`).
    pub fn metrics(&self) -> Arc<access::Metrics> {
        self.metrics.clone()
    }

    /// Serves the running HTTP and HTTPS listeners of active instances in `cfg` and stops the
    /// others. Must run inside a Tokio runtime. A listener that cannot be served is reported
    /// and tried again on the next call.
    pub fn apply(&mut self, cfg: &Config) -> Vec<ProxyError> {
        let mut wanted: HashMap<SocketAddr, (RouteInputs, IpAddr)> = HashMap::new();
        for lb in &cfg.load_balancers {
            if lb.status != InstanceStatus::Active {
                continue;
            }
            for l in &lb.listeners {
                let Some(http) = &l.http else { continue };
                if l.status != ListenerStatus::Running {
                    continue;
                }
                let rule_members = http
                    .rules
                    .iter()
                    .map(|r| {
                        let group = GroupRef::VServerGroup(r.vserver_group_id.clone());
                        cfg.group_members(lb, &group, None)
                    })
                    .collect();
                let inputs = RouteInputs {
                    load_balancer_id: lb.load_balancer_id.clone(),
                    protocol: l.protocol,
                    listener_port: l.listener_port,
                    scheduler: l.scheduler,
                    http: http.clone(),
                    members: cfg.listener_members(lb, l),
                    rule_members,
                    bandwidth: l.bandwidth,
                    certs: used_certificates(http, &cfg.certificates),
                };
                wanted.insert(
                    SocketAddr::new(lb.address, l.listener_port),
                    (inputs, lb.address),
                );
            }
        }
        self.served.retain(|addr, s| {
            let keep = wanted.contains_key(addr);
            if !keep {
                log::info!("{addr}: listener stopped; in-flight requests finish");
                s.stop();
            }
            keep
        });
        let mut errors = Vec::new();
        for (addr, (inputs, vip)) in wanted {
            // An unchanged listener keeps its route: no TLS contexts rebuilt per generation.
            if self.served.get(&addr).is_some_and(|s| s.inputs == inputs) {
                continue;
            }
            let route = match self.route(&inputs, vip) {
                Ok(r) => r,
                Err(source) => {
                    errors.push(ProxyError::Tls { addr, source });
                    continue;
                }
            };
            if let Some(s) = self.served.get_mut(&addr) {
                // New connections get the new route; open ones keep their TLS session.
                s.route.send_replace(Arc::new(route));
                s.inputs = inputs;
                continue;
            }
            if let Err(e) = self.make_local(vip) {
                errors.push(e);
                continue;
            }
            // A socket per worker: a new connection wakes the one worker it is queued for, the
            // one the picker (`steer`) finds least loaded. Measured before the picker, against
            // the kernel's hash, on the loopback rig and in the bench: one socket that every
            // worker waits on (tokio cannot ask for EPOLLEXCLUSIVE, so each connection wakes
            // them all), with or without one accept per wakeup, and handing a connection to the
            // worker with the fewest open ones in userspace. Each cut HTTPS keep-alive p99 by
            // 3-7 %, and each cost more elsewhere: HTTPS new-connection p99 +20 % (accepting
            // until EAGAIN), HTTP new-connection p99 +14 % and 8 % of requests per CPU-second
            // (one accept per wakeup), HTTP new-connection p99 +9 % (handoff).
            let listeners = match free(addr).and_then(|()| {
                self.workers
                    .iter()
                    .map(|_| listen(addr))
                    .collect::<std::io::Result<Vec<_>>>()
            }) {
                Ok(l) => l,
                Err(source) => {
                    errors.push(ProxyError::Listen { addr, source });
                    continue;
                }
            };
            if let (Some(steering), Some(first)) = (&mut self.steering, listeners.first()) {
                if let Err(e) = steering.attach(first) {
                    log::warn!("{addr}: {e}; the kernel spreads its new connections");
                }
            }
            let scheme = route.scheme;
            let (route, route_rx) = watch::channel(Arc::new(route));
            let mut stop = Vec::with_capacity(self.workers.len());
            for (w, listener) in self.workers.iter().zip(listeners) {
                let (tx, stop_rx) = watch::channel(false);
                stop.push(tx);
                w.handle.spawn(accept_loop(
                    listener,
                    route_rx.clone(),
                    stop_rx,
                    w.shared.clone(),
                ));
            }
            log::info!("{addr}: serving {scheme}");
            self.served.insert(
                addr,
                Served {
                    inputs,
                    route,
                    stop,
                },
            );
        }
        let in_use: BTreeSet<IpAddr> = self.served.keys().map(|a| a.ip()).collect();
        for vip in self.local.clone().difference(&in_use) {
            if let Err(e) = local_route("del", *vip) {
                log::warn!("{e}");
            }
            self.local.remove(vip);
        }
        errors
    }

    fn route(&self, inputs: &RouteInputs, vip: IpAddr) -> Result<Route, tls::TlsError> {
        let tls = match &inputs.http.tls {
            Some(settings) => Some(Arc::new(tls::acceptor(settings, &inputs.certs)?)),
            None => None,
        };
        let scheme = inputs.protocol.as_str();
        Ok(Route {
            name: format!(
                "{}/{scheme}/{}",
                inputs.load_balancer_id, inputs.listener_port
            )
            .into(),
            load_balancer_id: inputs.load_balancer_id.clone(),
            vip,
            listener_port: inputs.listener_port,
            scheme,
            http: inputs.http.clone(),
            pool: Pool::new(inputs.members.clone(), inputs.scheduler),
            rule_pools: inputs
                .rule_members
                .iter()
                .map(|m| Pool::new(m.clone(), inputs.scheduler))
                .collect(),
            tls,
            bandwidth: inputs
                .bandwidth
                .map(|mbit| Arc::new(bandwidth::Bucket::new(mbit, Instant::now()))),
            health: self.health.clone(),
        })
    }

    fn make_local(&mut self, vip: IpAddr) -> Result<(), ProxyError> {
        // An address of an interface is local already; its kernel route is not ours to remove.
        if self.local.contains(&vip) || is_interface_address(vip)? {
            return Ok(());
        }
        local_route("replace", vip)?;
        self.local.insert(vip);
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for s in self.served.values() {
            s.stop();
        }
        for vip in &self.local {
            if let Err(e) = local_route("del", *vip) {
                log::warn!("{e}");
            }
        }
    }
}

/// The kernel's own local route for `vip` exists: it is an address of an interface.
fn is_interface_address(vip: IpAddr) -> Result<bool, ProxyError> {
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    let out = Command::new("ip")
        .args([family, "route", "show", "table", "local", "exact"])
        .arg(vip.to_string())
        .args(["proto", "kernel"])
        .output()
        .map_err(|e| ProxyError::LocalRoute {
            vip,
            detail: format!("running ip: {e}"),
        })?;
    Ok(out.status.success() && !out.stdout.trim_ascii().is_empty())
}

/// `ip route <verb> local VIP dev lo`: the kernel then delivers what XDP passes for the VIP to
/// local sockets.
fn local_route(verb: &str, vip: IpAddr) -> Result<(), ProxyError> {
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    let out = Command::new("ip")
        .args([
            family,
            "route",
            verb,
            "local",
            &vip.to_string(),
            "dev",
            "lo",
        ])
        .output()
        .map_err(|e| ProxyError::LocalRoute {
            vip,
            detail: format!("running ip: {e}"),
        })?;
    if !out.status.success() {
        return Err(ProxyError::LocalRoute {
            vip,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted agent binds again while the old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

/// Fails when something listens on `addr` already. The workers' sockets share the port
/// (`SO_REUSEPORT`), and so would another process's that set it too; a plain bind first
/// reports such a port as in use instead of splitting its connections.
fn free(addr: SocketAddr) -> std::io::Result<()> {
    socket(addr)?.bind(addr)
}

/// A worker's listening socket, non-blocking, not yet tied to a runtime.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket(addr)?;
    socket.set_reuseport(true)?;
    // Accepted connections inherit it: one call per listener, not one per connection.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)?.into_std()
}

async fn accept_loop(
    listener: std::net::TcpListener,
    route: watch::Receiver<Arc<Route>>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return log::error!("registering a listening socket: {e}"),
    };
    // One wait for the stop rather than one per connection accepted.
    let stopped = stop.clone();
    let mut stopping = std::pin::pin!(stop.changed());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = Connection {
                        peer,
                        route: route.clone(),
                        stop: stopped.clone(),
                        shared: shared.clone(),
                    };
                    conn.spawn(stream);
                }
                Err(e) => {
                    // Out of descriptors or a client that reset first: keep serving.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopping => return,
        }
    }
}

/// One client connection.
struct Connection {
    peer: SocketAddr,
    route: watch::Receiver<Arc<Route>>,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// A connection's future, counted open for the worker picker until it ends or is dropped. Not
/// an `async fn`: one would keep the future it is handed and the one it awaits apart, twice
/// the size of every idle connection's task.
struct Counted<F> {
    serve: F,
    _open: Option<steer::Open>,
}

impl<F: std::future::Future> std::future::Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let _polled = PolledAt::start();
        // SAFETY: `serve` is pinned with `self` (structural pinning): it is never moved out,
        // and `Counted` has no `Drop` of its own.
        unsafe { self.map_unchecked_mut(|c| &mut c.serve) }.poll(cx)
    }
}

/// The clock as [`now`] sees it on this thread.
#[derive(Clone, Copy)]
enum PollClock {
    /// Not inside a connection task's poll.
    Outside,
    /// Inside one, before anything asked for the time.
    Unread,
    Read(Instant),
}

thread_local! {
    static POLL_CLOCK: std::cell::Cell<PollClock> = const { std::cell::Cell::new(PollClock::Outside) };
}

/// The time, read at most once per poll of a client connection's task (as nginx reads it once
/// per turn of its event loop): a keep-alive request took seven clock reads otherwise (its
/// start, its head's and its end's timings, the backend pool's idle times, the `RequestTimeout`
/// deadline, the connection's idle time), some 1.5 % of a worker's time under `cargo xtask
/// bench l7`. A poll lasts microseconds. Elsewhere, the clock is read on each call.
pub fn now() -> Instant {
    match POLL_CLOCK.get() {
        PollClock::Read(at) => at,
        PollClock::Unread => {
            let at = Instant::now();
            POLL_CLOCK.set(PollClock::Read(at));
            at
        }
        PollClock::Outside => Instant::now(),
    }
}

/// Marks the poll under way for [`now`] until dropped; a poll that never asks reads no clock.
struct PolledAt;

impl PolledAt {
    fn start() -> PolledAt {
        POLL_CLOCK.set(PollClock::Unread);
        PolledAt
    }
}

impl Drop for PolledAt {
    fn drop(&mut self) {
        POLL_CLOCK.set(PollClock::Outside);
    }
}

/// Requests served on a connection and when it last went idle: HTTP/2's idle timeout and
/// request limit are enforced from this.
struct Activity {
    served: AtomicU32,
    in_flight: AtomicU32,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| {
            self.idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
        })
    }
}

/// A request in progress on its connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

impl Connection {
    /// Serves the connection on a task of its own, its future boxed. The box is as large as
    /// the largest state the future may be in, and a plain HTTP connection's is a fraction of
    /// the TLS and HTTP/2 paths', which idle HTTP connections would otherwise be sized for.
    /// Unboxed, tokio moved the future's 800 bytes several times on its way into the task and
    /// wrote the task's whole stage again when it ended, which cost more than the allocation.
    fn spawn(self, stream: TcpStream) {
        let route = self.route.borrow().clone();
        let idle = Duration::from_secs(route.http.idle_timeout.into());
        let _open = self.shared.load.as_ref().map(|l| l.open());
        match route.tls.clone() {
            None => tokio::spawn(Box::pin(Counted {
                serve: self.serve_http1(stream, idle, false),
                _open,
            })),
            Some(acceptor) => tokio::spawn(Box::pin(Counted {
                serve: self.serve_tls(stream, acceptor, idle),
                _open,
            })),
        };
    }

    async fn serve_tls(self, stream: TcpStream, acceptor: Arc<SslAcceptor>, idle: Duration) {
        let handshake = async {
            let ssl = Ssl::new(acceptor.context())?;
            let mut tls = tokio_openssl::SslStream::new(ssl, stream)?;
            Pin::new(&mut tls)
                .accept()
                .await
                .map_err(|e| e.into_io_error().unwrap_or_else(std::io::Error::other))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(tls)
        };
        // A client gets IdleTimeout to complete its handshake.
        let tls = match tokio::time::timeout(idle, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return log::debug!("client {}: TLS handshake: {e}", self.peer),
            Err(_) => return log::debug!("client {}: TLS handshake timed out", self.peer),
        };
        if tls.ssl().selected_alpn_protocol() == Some(b"h2") {
            // Boxed: HTTP/2's connection state is several times what an idle HTTP/1.1 one
            // needs, and the task would be sized for it.
            Box::pin(self.serve_http2(TokioIo::new(tls), idle)).await
        } else {
            self.serve_http1(tls, idle, true).await
        }
    }

    fn serve_http1<S>(
        self,
        io: S,
        idle: Duration,
        close_notify: bool,
    ) -> impl std::future::Future<Output = ()> + Send + use<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = forward::Client::new(self.peer);
        let (route, shared) = (self.route, self.shared);
        h1::serve(io, idle, close_notify, self.stop, move |req| {
            let route = route.borrow().clone();
            forward::handle(req, route, client.clone(), shared.clone())
        })
    }

    async fn serve_http2<I>(mut self, io: I, idle: Duration)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            served: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            idle_since: Mutex::new(Instant::now()),
        });
        let (peer, route, shared) = (
            forward::Client::new(self.peer),
            self.route.clone(),
            self.shared.clone(),
        );
        let svc = {
            let activity = activity.clone();
            service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let route = route.borrow().clone();
                let busy = activity.begin();
                busy.0.served.fetch_add(1, Ordering::Relaxed);
                let (peer, shared) = (peer.clone(), shared.clone());
                // RFC 8441: WebSocket comes as an extended CONNECT.
                let upgraded =
                    (req.method() == hyper::Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
                async move {
                    // An HTTP/2 request's answer has its fields in its map, not as lines.
                    let forward::Answer { resp, tunnel, .. } =
                        forward::handle(Box::new(req), route, peer, shared).await;
                    if let (Some(tunnel), Some(upgraded)) = (tunnel, upgraded) {
                        tokio::spawn(async move {
                            match upgraded.await {
                                Ok(client) => {
                                    tunnel.relay(TokioIo::new(client), Bytes::new()).await
                                }
                                Err(e) => log::debug!("upgrade not completed: {e}"),
                            }
                        });
                    }
                    drop(busy);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_REQUESTS_PER_CONNECTION)
            // WebSocket over HTTP/2 (RFC 8441, B9.18).
            .enable_connect_protocol()
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = self.stop.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = check.tick(), if !closing => {
                    // B9.7 (DECISION: HTTP/2 too) and B9.9: GOAWAY, then in-flight streams end.
                    let done = activity.served.load(Ordering::Relaxed) >= MAX_REQUESTS_PER_CONNECTION;
                    if done || activity.idle_for().is_some_and(|d| d >= idle) {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        };
        if let Err(e) = result {
            log::debug!("client {}: {e}", self.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's thread gets the short slice and keeps the nice value it had.
    #[test]
    fn workers_ask_for_a_short_slice_and_keep_their_nice_value() {
        std::thread::spawn(|| {
            // SAFETY: raises the calling thread's nice value, which any thread may.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) }, 0);
            short_slice().unwrap();
            // SAFETY: a query of the calling thread.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, 3);
            let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
            match sched.lines().find(|l| l.starts_with("se.slice")) {
                Some(l) => assert_eq!(
                    l.split(':').nth(1).map(str::trim),
                    Some(WORKER_SLICE.as_nanos().to_string().as_str())
                ),
                None => eprintln!(
                    "slice not checked: this kernel does not show se.slice in \
                     /proc/thread-self/sched (it appears with 6.12 and CONFIG_SCHED_DEBUG)"
                ),
            }
        })
        .join()
        .unwrap();
    }

    /// The workers share a port; a port something else listens on is reported in use.
    #[tokio::test]
    async fn workers_share_a_port_that_was_free() {
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let taken = free(addr).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        drop((first, second));
        free(addr).unwrap();
    }

    /// A worker tells the picker when it waits for work.
    #[test]
    fn workers_report_when_they_wait() {
        let steering = steer::Steering::load(1).unwrap();
        let load = Arc::new(steering.load_of(0));
        let worker = Worker::start(0, Arc::default(), Some(load.clone())).unwrap();
        let until = |want: bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while load.is_parked() != want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            load.is_parked()
        };
        assert!(until(true), "an idle worker waits");
        let (busy, running) = std::sync::mpsc::channel();
        let (done, finish) = std::sync::mpsc::channel::<()>();
        worker.handle.spawn(async move {
            busy.send(()).unwrap();
            // Holds the worker's thread, as a long request's work would.
            let _ = finish.recv();
        });
        running.recv().unwrap();
        assert!(!load.is_parked(), "a worker running a task is not waiting");
        done.send(()).unwrap();
        assert!(until(true), "the worker waits again");
    }

    /// A counted connection's task is the size of the connection's own future: no second copy.
    #[test]
    fn counting_a_connection_keeps_its_future_size() {
        let state = [0u8; 800];
        let serve = async move {
            tokio::task::yield_now().await;
            std::hint::black_box(&state);
        };
        let alone = std::mem::size_of_val(&serve);
        let counted = Counted { serve, _open: None };
        // The guard and at most its alignment's padding.
        let size = std::mem::size_of_val(&counted);
        assert!(size <= alone + 16, "{size} bytes for a {alone}-byte future");
    }

    /// `now` reads the clock when a connection task's poll first asks, holds still for the rest
    /// of that poll, reads the clock again on the next poll, and reads it on every call outside
    /// one.
    #[tokio::test]
    async fn the_clock_is_read_once_per_poll_of_a_connection() {
        let serve = async {
            let polled = Instant::now();
            std::thread::sleep(Duration::from_millis(5));
            let first = now();
            assert!(
                first - polled >= Duration::from_millis(5),
                "read when first asked"
            );
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(now(), first, "one reading for the whole poll");
            tokio::task::yield_now().await;
            let next = now();
            assert!(next - first >= Duration::from_millis(5), "read again");
            next
        };
        let polled = Counted { serve, _open: None }.await;
        let outside = now();
        std::thread::sleep(Duration::from_millis(5));
        assert!(now() - outside >= Duration::from_millis(5));
        assert!(outside > polled);
    }

    /// Answers go out as they are written, on connections that set nothing themselves.
    #[tokio::test]
    async fn accepted_connections_do_not_wait_to_send() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
