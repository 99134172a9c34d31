//! The layer-7 proxy (§9): the agent serves HTTP listeners itself. XDP passes their packets to
//! the kernel stack after the ACL; the agent makes each such VIP a local address (a `local`
//! route on `lo`) and listens on VIP:port. Listeners start, change and stop one by one: a
//! changed listener keeps its socket and connections, a stopped one stops accepting and lets
//! its in-flight requests finish.
pub mod domain;
pub mod forward;
pub mod pool;

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper::{header::HeaderValue, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};

use crate::{
    config::{Config, HttpSettings, InstanceStatus, ListenerStatus, Member, Protocol, Scheduler},
    health::Status,
};
use pool::Pool;

/// A client connection is closed after this many requests (B9.9).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100;

/// What a listener's requests need; replaced as a whole when the listener changes.
pub struct Route {
    /// `<LoadBalancerId>/http/<port>`, for logs.
    pub name: String,
    pub load_balancer_id: String,
    pub vip: IpAddr,
    pub listener_port: u16,
    pub scheme: &'static str,
    pub http: HttpSettings,
    pub pool: Pool,
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
}

/// The inputs a listener's route is built from: a change in any rebuilds it. Health check
/// settings are not among them: verdicts are read per request.
#[derive(PartialEq)]
struct RouteInputs {
    load_balancer_id: String,
    listener_port: u16,
    scheduler: Scheduler,
    http: HttpSettings,
    members: Vec<Member>,
}

struct Served {
    inputs: RouteInputs,
    route: watch::Sender<Arc<Route>>,
    stop: watch::Sender<bool>,
}

/// The HTTP listeners being served.
pub struct Proxy {
    health: Arc<Status>,
    served: HashMap<SocketAddr, Served>,
    /// VIPs this agent made local.
    local: BTreeSet<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("making {vip} a local address: {detail}")]
    LocalRoute { vip: IpAddr, detail: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Proxy {
    pub fn new(health: Arc<Status>) -> Proxy {
        Proxy {
            health,
            served: HashMap::new(),
            local: BTreeSet::new(),
        }
    }

    /// Serves the running HTTP listeners of active instances in `cfg` and stops the others.
    /// Must run inside a Tokio runtime. A listener that cannot be served is reported and tried
    /// again on the next call.
    pub fn apply(&mut self, cfg: &Config) -> Vec<ProxyError> {
        let mut wanted: HashMap<SocketAddr, (RouteInputs, IpAddr)> = HashMap::new();
        for lb in &cfg.load_balancers {
            if lb.status != InstanceStatus::Active {
                continue;
            }
            for l in &lb.listeners {
                let Some(http) = &l.http else { continue };
                if l.protocol != Protocol::Http || l.status != ListenerStatus::Running {
                    continue;
                }
                let inputs = RouteInputs {
                    load_balancer_id: lb.load_balancer_id.clone(),
                    listener_port: l.listener_port,
                    scheduler: l.scheduler,
                    http: http.clone(),
                    members: cfg.listener_members(lb, l),
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
                let _ = s.stop.send(true);
            }
            keep
        });
        let mut errors = Vec::new();
        for (addr, (inputs, vip)) in wanted {
            if let Some(s) = self.served.get_mut(&addr) {
                if s.inputs != inputs {
                    s.route
                        .send_replace(Arc::new(Self::route(&self.health, &inputs, vip)));
                    s.inputs = inputs;
                }
                continue;
            }
            if let Err(e) = self.make_local(vip) {
                errors.push(e);
                continue;
            }
            let listener = match listen(addr) {
                Ok(l) => l,
                Err(source) => {
                    errors.push(ProxyError::Listen { addr, source });
                    continue;
                }
            };
            let (route, route_rx) =
                watch::channel(Arc::new(Self::route(&self.health, &inputs, vip)));
            let (stop, stop_rx) = watch::channel(false);
            tokio::spawn(accept_loop(listener, route_rx, stop_rx));
            log::info!("{addr}: serving HTTP");
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

    fn route(health: &Arc<Status>, inputs: &RouteInputs, vip: IpAddr) -> Route {
        Route {
            name: format!("{}/http/{}", inputs.load_balancer_id, inputs.listener_port),
            load_balancer_id: inputs.load_balancer_id.clone(),
            vip,
            listener_port: inputs.listener_port,
            scheme: "http",
            http: inputs.http.clone(),
            pool: Pool::new(inputs.members.clone(), inputs.scheduler),
            health: health.clone(),
        }
    }

    fn make_local(&mut self, vip: IpAddr) -> Result<(), ProxyError> {
        if self.local.contains(&vip) {
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
            let _ = s.stop.send(true);
        }
        for vip in &self.local {
            if let Err(e) = local_route("del", *vip) {
                log::warn!("{e}");
            }
        }
    }
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

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted agent binds again while the old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_loop(
    listener: TcpListener,
    route: watch::Receiver<Arc<Route>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, route.clone(), stop.clone()));
                }
                Err(e) => {
                    // Out of descriptors or a client that reset first: keep serving.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    route: watch::Receiver<Arc<Route>>,
    mut stop: watch::Receiver<bool>,
) {
    let idle = Duration::from_secs(route.borrow().http.idle_timeout.into());
    let served = Arc::new(AtomicU32::new(0));
    let svc = service_fn(move |req| {
        let route = route.borrow().clone();
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let mut resp = forward::handle(req, route, peer).await;
            if n >= MAX_REQUESTS_PER_CONNECTION {
                resp.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    // The header read timeout runs from the end of one response to the next request's head:
    // a keep-alive connection idle for IdleTimeout is closed (B9.7).
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        log::debug!("client {peer}: {e}");
    }
}
