//! Health checks (§8). One checker runs per backend address and check definition, shared by
//! every listener that uses the same one; its verdict takes the backend out of new-flow
//! selection and back (B4.15) and is what DescribeHealthStatus reports (B8.14).
pub mod probe;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::Semaphore, task::JoinHandle, time::Instant};

pub use probe::Failure;

use crate::{
    config::{
        Config, HealthCheckHttpVersion, HealthCheckMethod, HttpCodeClass, InstanceStatus,
        ListenerStatus, Probe, Protocol,
    },
    dataplane::image::BackendAddr,
};

/// What is probed, how, and how often: the identity of a checker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Check {
    pub target: SocketAddr,
    pub probe: ProbeKind,
    /// Seconds between probes (B8.8).
    pub interval: u16,
    /// The effective timeout in seconds: the larger of timeout and interval (B8.9).
    pub timeout: u16,
    pub healthy_threshold: u8,
    pub unhealthy_threshold: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Tcp,
    Http {
        /// `HealthCheckDomain`, or the backend's address for `$_ip` (B8.4).
        host: String,
        uri: String,
        method: HealthCheckMethod,
        version: HealthCheckHttpVersion,
        codes: Vec<HttpCodeClass>,
    },
    Udp {
        request: Option<String>,
        expect: Option<String>,
    },
}

impl ProbeKind {
    fn name(&self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http { .. } => "http",
            ProbeKind::Udp { .. } => "udp",
        }
    }
}

/// A listener's member that a check speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub load_balancer_id: String,
    pub protocol: Protocol,
    pub listener_port: u16,
    pub server_id: String,
    /// The member's serving address: what the data plane forwards to.
    pub backend: SocketAddr,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{} {} ({})",
            self.load_balancer_id,
            self.protocol.as_str(),
            self.listener_port,
            self.server_id,
            self.backend
        )
    }
}

/// The checks a configuration asks for, each with the members it speaks for. Only running
/// listeners of active instances are checked; TCP/UDP always (B8.1), HTTP/HTTPS with
/// `HealthCheck=on` (B8.2), except an HTTP listener that redirects to HTTPS (B9.19).
pub fn plan(cfg: &Config) -> BTreeMap<Check, Vec<Subject>> {
    let mut out: BTreeMap<Check, Vec<Subject>> = BTreeMap::new();
    for lb in &cfg.load_balancers {
        if lb.status != InstanceStatus::Active {
            continue;
        }
        for l in &lb.listeners {
            let hc = &l.health_check;
            let redirects = l.http.as_ref().is_some_and(|h| h.forward_port.is_some());
            if l.status != ListenerStatus::Running || !hc.enabled || redirects {
                continue;
            }
            for m in cfg.serving_members(lb, l) {
                let probe = match &hc.probe {
                    Probe::Tcp => ProbeKind::Tcp,
                    Probe::Http(p) => ProbeKind::Http {
                        host: p.domain.clone().unwrap_or_else(|| host_of(m.addr)),
                        uri: p.uri.clone(),
                        method: p.method,
                        version: p.version,
                        codes: p.http_codes.clone(),
                    },
                    Probe::Udp { request, expect } => ProbeKind::Udp {
                        request: request.clone(),
                        expect: expect.clone(),
                    },
                };
                let check = Check {
                    target: SocketAddr::new(m.addr, hc.connect_port.unwrap_or(m.port)),
                    probe,
                    interval: hc.interval,
                    timeout: hc.timeout.max(hc.interval),
                    healthy_threshold: hc.healthy_threshold,
                    unhealthy_threshold: hc.unhealthy_threshold,
                };
                out.entry(check).or_default().push(Subject {
                    load_balancer_id: lb.load_balancer_id.clone(),
                    protocol: l.protocol,
                    listener_port: l.listener_port,
                    server_id: m.server_id,
                    backend: SocketAddr::new(m.addr, m.port),
                });
            }
        }
    }
    out
}

/// An address as an HTTP `Host` (IPv6 in brackets).
pub fn host_of(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Consecutive-result thresholds (B8.10): a backend starts healthy (B8.15) and flips only after
/// a run of `threshold` contrary results; any agreeing result ends the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// Contrary results in a row so far.
    pub run: u8,
}

impl Default for Verdict {
    fn default() -> Verdict {
        Verdict {
            healthy: true,
            run: 0,
        }
    }
}

impl Verdict {
    /// Takes one probe result; true when the verdict flipped.
    pub fn observe(&mut self, ok: bool, healthy_threshold: u8, unhealthy_threshold: u8) -> bool {
        if ok == self.healthy {
            self.run = 0;
            return false;
        }
        self.run += 1;
        let needed = if ok {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if self.run < needed {
            return false;
        }
        *self = Verdict {
            healthy: ok,
            run: 0,
        };
        true
    }
}

/// A checker's results so far.
#[derive(Debug, Clone, Default)]
pub struct CheckState {
    pub verdict: Verdict,
    pub subjects: Vec<Subject>,
    pub probes: u64,
    pub failures: u64,
    pub flips: u64,
    pub last_latency: Option<Duration>,
}

/// One probe result as the checker saw it, for whoever listens (tests, the benchmark).
#[derive(Debug, Clone)]
pub struct Observation {
    pub check: Check,
    pub started: Instant,
    pub latency: Duration,
    pub result: Result<(), Failure>,
    /// The verdict after this result, and whether it flipped.
    pub verdict: Verdict,
    pub flipped: bool,
}

#[derive(Default)]
struct Inner {
    checks: HashMap<Check, CheckState>,
    /// LoadBalancerId → (ListenerPort, member address) → its check. Nested so that a lookup
    /// (one per member per proxied request) borrows the id instead of allocating a key.
    subjects: HashMap<String, HashMap<(u16, SocketAddr), Check>>,
}

/// Every checker's state, shared by the checkers, the agent loop and the API.
pub struct Status {
    inner: Mutex<Inner>,
    /// Counts verdict flips, so the agent wakes up to reprogram the data plane.
    flips: tokio::sync::watch::Sender<u64>,
    observer: Option<tokio::sync::mpsc::UnboundedSender<Observation>>,
}

impl Status {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a few assignments that cannot panic halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The verdict for a listener's member: `None` when no check runs for it (B8.14).
    pub fn healthy(
        &self,
        load_balancer_id: &str,
        listener_port: u16,
        backend: SocketAddr,
    ) -> Option<bool> {
        let inner = self.lock();
        let check = inner
            .subjects
            .get(load_balancer_id)?
            .get(&(listener_port, backend))?;
        inner.checks.get(check).map(|s| s.verdict.healthy)
    }

    /// Serving addresses that fail a check: out of new-flow selection. An address shared by
    /// listeners with different checks is out as soon as one of them fails it, because the data
    /// plane keeps one health flag per address.
    pub fn down(&self) -> BTreeSet<BackendAddr> {
        self.lock()
            .checks
            .values()
            .filter(|s| !s.verdict.healthy)
            .flat_map(|s| s.subjects.iter().map(|x| BackendAddr(x.backend)))
            .collect()
    }

    /// A receiver that sees every verdict flip.
    pub fn flips(&self) -> tokio::sync::watch::Receiver<u64> {
        self.flips.subscribe()
    }

    pub fn snapshot(&self) -> Vec<(Check, CheckState)> {
        let inner = self.lock();
        let mut out: Vec<(Check, CheckState)> = inner
            .checks
            .iter()
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn record(
        &self,
        check: &Check,
        started: Instant,
        latency: Duration,
        result: Result<(), Failure>,
    ) {
        let mut inner = self.lock();
        // A check removed while its probe ran has nobody to report to.
        let Some(state) = inner.checks.get_mut(check) else {
            return;
        };
        state.probes += 1;
        state.last_latency = Some(latency);
        if result.is_err() {
            state.failures += 1;
        }
        let flipped = state.verdict.observe(
            result.is_ok(),
            check.healthy_threshold,
            check.unhealthy_threshold,
        );
        let verdict = state.verdict;
        if flipped {
            state.flips += 1;
            let (from, to, n) = if verdict.healthy {
                ("abnormal", "normal", check.healthy_threshold)
            } else {
                ("normal", "abnormal", check.unhealthy_threshold)
            };
            let last = match &result {
                Ok(()) => String::new(),
                Err(f) => format!(" (last: {f})"),
            };
            let outcome = if verdict.healthy { "passed" } else { "failed" };
            for s in &state.subjects {
                log::warn!(
                    "health {s}: {from} -> {to} after {n} {outcome} {} checks of {}{last}",
                    check.probe.name(),
                    check.target
                );
            }
        }
        drop(inner);
        if flipped {
            self.flips.send_modify(|n| *n += 1);
        }
        if let Some(tx) = &self.observer {
            let _ = tx.send(Observation {
                check: check.clone(),
                started,
                latency,
                result,
                verdict,
                flipped,
            });
        }
    }

    /// Prometheus text: per member its verdict, last check latency and counts.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let rows = self.snapshot();
        let metrics: [Metric; 5] = [
            ("slb_backend_healthy", "gauge", "1 while the member passes its health check (normal), 0 while it fails it (abnormal).", |s| f64::from(u8::from(s.verdict.healthy))),
            ("slb_health_check_latency_seconds", "gauge", "Duration of the member's last health check probe.", |s| s.last_latency.map_or(0.0, |d| d.as_secs_f64())),
            ("slb_health_checks_total", "counter", "Health check probes run for the member.", |s| s.probes as f64),
            ("slb_health_check_failures_total", "counter", "Health check probes that failed.", |s| s.failures as f64),
            ("slb_health_flips_total", "counter", "Changes of the member's health verdict.", |s| s.flips as f64),
        ];
        for (name, kind, help, value) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (check, state) in &rows {
                for s in &state.subjects {
                    let _ = writeln!(
                        out,
                        "{name}{{load_balancer_id=\"{}\",listener=\"{}/{}\",server_id=\"{}\",backend=\"{}\",check=\"{} {}\"}} {}",
                        s.load_balancer_id,
                        s.protocol.as_str(),
                        s.listener_port,
                        s.server_id,
                        s.backend,
                        check.probe.name(),
                        check.target,
                        value(state)
                    );
                }
            }
        }
        out
    }
}

/// A metric: name, type, help, and its value for a check.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CheckState) -> f64,
);

/// The most probes in flight at once; more wait for a slot rather than exhaust descriptors.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Runs the checkers a configuration asks for.
pub struct Engine {
    status: Arc<Status>,
    tasks: HashMap<Check, JoinHandle<()>>,
    permits: Arc<Semaphore>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

impl Engine {
    pub fn new() -> Engine {
        Self::with_observer(None)
    }

    /// An engine that also sends every probe result to `observer`.
    pub fn with_observer(
        observer: Option<tokio::sync::mpsc::UnboundedSender<Observation>>,
    ) -> Engine {
        Engine {
            status: Arc::new(Status {
                inner: Mutex::default(),
                flips: tokio::sync::watch::channel(0).0,
                observer,
            }),
            tasks: HashMap::new(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Starts the checks `cfg` adds and stops those it drops; a check that stays keeps its
    /// verdict and runs. Must run inside a Tokio runtime.
    pub fn apply(&mut self, cfg: &Config) {
        let plan = plan(cfg);
        let mut inner = self.status.lock();
        self.tasks.retain(|check, task| {
            let keep = plan.contains_key(check);
            if !keep {
                task.abort();
            }
            keep
        });
        inner.checks.retain(|check, _| plan.contains_key(check));
        inner.subjects.clear();
        for (check, subjects) in plan {
            for s in &subjects {
                inner
                    .subjects
                    .entry(s.load_balancer_id.clone())
                    .or_default()
                    .insert((s.listener_port, s.backend), check.clone());
            }
            inner.checks.entry(check.clone()).or_default().subjects = subjects;
            if !self.tasks.contains_key(&check) {
                let task = tokio::spawn(run(
                    check.clone(),
                    self.status.clone(),
                    self.permits.clone(),
                ));
                self.tasks.insert(check, task);
            }
        }
    }
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::new()
    }
}

/// A stable pseudo-random number per check, so that checks spread over the interval the same
/// way in every run.
fn seed(check: &Check) -> u64 {
    let mut h = DefaultHasher::new();
    check.hash(&mut h);
    h.finish() | 1
}

/// One checker: probes every interval, starting at an offset spread by the check's hash, each
/// probe up to 1/16 of an interval late so that checks with close offsets do not run in step.
async fn run(check: Check, status: Arc<Status>, permits: Arc<Semaphore>) {
    let interval = Duration::from_secs(check.interval.into());
    let mut rng = seed(&check);
    let mut random = move |bound: Duration| -> Duration {
        // xorshift64: cheap, and only spreading matters here.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let nanos = bound.as_nanos().max(1) as u64;
        Duration::from_nanos(rng % nanos)
    };
    // Rounds fall due every interval from the check's own phase; each probe starts up to 1/16
    // of an interval after its round is due, so checks with close phases do not probe in step,
    // and that jitter does not add up: on average a check runs once per interval.
    let mut due = Instant::now() + random(interval);
    loop {
        tokio::time::sleep_until(due + random(interval / 16)).await;
        let Ok(permit) = permits.acquire().await else {
            return;
        };
        let started = Instant::now();
        let result = probe::run(&check).await;
        let latency = started.elapsed();
        drop(permit);
        status.record(&check, started, latency, result);
        // A probe that overran the interval is followed at once by the next one (B8.8).
        due = (due + interval).max(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// B8.10 and B8.15: start healthy, flip after exactly the threshold of contrary results in
    /// a row, and any agreeing result resets the run.
    #[test]
    fn thresholds_count_consecutive_results() {
        let mut v = Verdict::default();
        let mut feed = |results: &str| -> String {
            results
                .chars()
                .map(|c| {
                    if v.observe(c == '+', 2, 3) {
                        if v.healthy {
                            'U'
                        } else {
                            'D'
                        }
                    } else {
                        '.'
                    }
                })
                .collect()
        };
        assert_eq!(feed("++--+---"), ".......D");
        assert_eq!(feed("-+-+-++"), "......U");
        assert_eq!(feed("--+--"), ".....");
        assert_eq!(feed("-"), "D");
    }

    /// B8.1, B8.2, B8.4, B8.7, B8.9, B8.12: which members are checked, where and how.
    #[test]
    fn plan_follows_the_listeners() {
        let http = "[[LoadBalancers.Listeners]]\nListenerProtocol = \"http\"\nBackendServerPort = 80\nStickySession = \"off\"\n";
        let text = format!(
            "[[LoadBalancers]]\nLoadBalancerId = \"lb-1\"\nAddress = \"10.0.0.1\"\n\
             BackendServers = [ {{ ServerId = \"10.1.0.1\" }}, {{ ServerId = \"10.1.0.2\", Weight = 0 }} ]\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 8080\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 81\nBackendServerPort = 8080\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"udp\"\nListenerPort = 53\nBackendServerPort = 53\n\
             HealthCheckReq = \"ping\"\nHealthCheckExp = \"pong\"\nHealthCheckConnectPort = 5353\nHealthCheckTimeout = 1\nHealthCheckInterval = 4\n\
             {http}ListenerPort = 8000\nHealthCheck = \"on\"\nHealthCheckURI = \"/ok\"\n\
             {http}ListenerPort = 8001\nHealthCheck = \"off\"\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 82\nBackendServerPort = 8080\nStatus = \"stopped\"\n\
             [[LoadBalancers]]\nLoadBalancerId = \"lb-6\"\nAddress = \"fd00::100\"\nBackendServers = [ {{ ServerId = \"fd00::1\" }} ]\n\
             {http}ListenerPort = 8000\nHealthCheck = \"on\"\nHealthCheckURI = \"/ok\"\n"
        );
        let plan = plan(&config::parse(&text, "t.toml").unwrap());
        let v4: IpAddr = "10.1.0.1".parse().unwrap();
        let v4b: IpAddr = "10.1.0.2".parse().unwrap();
        // Two TCP listeners on the same port share one checker per member; weight 0 is checked.
        let tcp: Vec<(&Check, usize)> = plan
            .iter()
            .filter(|(c, _)| c.probe == ProbeKind::Tcp)
            .map(|(c, s)| (c, s.len()))
            .collect();
        assert_eq!(tcp.len(), 2);
        for (c, n) in tcp {
            assert_eq!(n, 2);
            assert!(
                c.target == SocketAddr::new(v4, 8080) || c.target == SocketAddr::new(v4b, 8080)
            );
            assert_eq!(
                (
                    c.interval,
                    c.timeout,
                    c.healthy_threshold,
                    c.unhealthy_threshold
                ),
                (2, 5, 3, 3)
            );
        }
        let udp = plan
            .keys()
            .find(|c| c.target == SocketAddr::new(v4, 5353))
            .unwrap();
        assert_eq!(
            udp.timeout, 4,
            "timeout < interval: the interval is the timeout (B8.9)"
        );
        assert_eq!(
            udp.probe,
            ProbeKind::Udp {
                request: Some("ping".into()),
                expect: Some("pong".into())
            }
        );
        let hosts: BTreeSet<String> = plan
            .keys()
            .filter_map(|c| match &c.probe {
                ProbeKind::Http { host, uri, .. } => {
                    assert_eq!(uri, "/ok");
                    Some(host.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            hosts,
            BTreeSet::from(["10.1.0.1", "10.1.0.2", "[fd00::1]"].map(String::from))
        );
        assert!(plan
            .values()
            .flatten()
            .all(|s| s.listener_port != 8001 && s.listener_port != 82));
    }
}
