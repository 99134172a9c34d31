//! `slb bench-health`: the health-check engine checking 10,000 backends every 2 s, side by side
//! with HAProxy checking the same 10,000 servers (`check inter 2s fall 3 rise 3`, plain TCP
//! connect checks), one after the other in one run: the checker's CPU, the check rate and
//! failures, and how evenly the checks are spread in time.
//!
//! Every backend address 10.200.x.y is local to a network namespace of its own (one `local`
//! route over `lo`), where one listening socket on 0.0.0.0:8080 answers every check. A packet
//! socket on `lo` sees every check's SYN, from either checker, the same way, so the rate and
//! spread it records are directly comparable; the engine's own observations add probe latency
//! and its failures.
use std::{
    collections::HashMap,
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrIn,
};
use serde::Serialize;

use crate::{config, health};

const NS: &str = "slb-bench-hc";
const BACKENDS: usize = 10_000;
/// 500 backends per instance, as `bench-api` stores them; one TCP listener each.
const INSTANCES: usize = 20;
const PORT: u16 = 8080;
const INTERVAL_S: u16 = 2;
const INTERVAL: Duration = Duration::from_secs(INTERVAL_S as u64);
/// Both checkers spread their first round over one interval; half a second more lets the
/// last first probes finish before the window opens.
const WARMUP: Duration = Duration::from_millis(2500);
const WINDOW: Duration = Duration::from_secs(20);
const BUCKET: Duration = Duration::from_millis(100);
/// The engine's runtime threads: the only threads whose CPU is the checker's.
const SLB_THREAD: &str = "slb-health";
/// HAProxy parses 10,000 servers before it checks any.
const HAPROXY_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the observation collector drains its channel.
const DRAIN: Duration = Duration::from_millis(20);
/// How often the acceptor and the SYN capture look for more when idle.
const POLL: Duration = Duration::from_millis(2);
/// Well over one poll: how long before and after a window the capture records.
const EDGE: Duration = Duration::from_millis(50);

/// Check timing as one side saw it.
#[derive(Debug, Serialize)]
pub struct Spread {
    /// Successive probe starts of the same backend, both inside the window.
    pub gaps: usize,
    pub gap_mean_ms: f64,
    /// |gap − interval|.
    pub deviation_p50_ms: f64,
    pub deviation_p99_ms: f64,
    pub deviation_max_ms: f64,
    /// Probe starts per 100 ms bucket of the window.
    pub per_bucket_min: u64,
    pub per_bucket_mean: f64,
    pub per_bucket_max: u64,
    pub per_bucket_max_over_mean: f64,
}

/// One checker over the window; rate and spread from the SYNs seen on `lo`.
#[derive(Debug, Serialize)]
pub struct Side {
    pub threads: usize,
    /// utime + stime of the checker's threads over the window.
    pub cpu_s: f64,
    pub cpu_percent_of_core: f64,
    /// SYNs per second to the backends: checks started.
    pub checks_per_s: f64,
    /// SYNs the capture lost in the window (the rate and spread miss them).
    pub capture_drops: u64,
    pub cpu_us_per_check: f64,
    /// Failed checks in the window, as the checker itself counts them.
    pub failures: u64,
    pub spread: Spread,
}

/// What the engine itself reported for every probe it started in the window.
#[derive(Debug, Serialize)]
pub struct EngineView {
    pub probes_per_s: f64,
    pub failures: u64,
    /// Up to 5 distinct failure reasons.
    pub failure_examples: Vec<String>,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub spread: Spread,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub backends: usize,
    pub interval_s: u16,
    pub warmup_s: f64,
    pub window_s: f64,
    pub slb: Side,
    pub slb_engine: EngineView,
    pub haproxy: Side,
    pub haproxy_version: String,
    /// Servers HAProxy reports UP at the end of its window.
    pub haproxy_servers_up: usize,
    pub cpu_ratio_slb_over_haproxy: f64,
    pub cpu_per_check_ratio_slb_over_haproxy: f64,
}

fn backend(i: usize) -> Ipv4Addr {
    // 250 per /24, never .0 or .255, so every address also reads as an ordinary host.
    Ipv4Addr::new(10, 200, (1 + i / 250) as u8, (1 + i % 250) as u8)
}

fn config_text() -> String {
    let per = BACKENDS / INSTANCES;
    let mut t = String::new();
    for lb in 0..INSTANCES {
        let servers: Vec<String> = (lb * per..(lb + 1) * per)
            .map(|i| format!("{{ ServerId = \"{}\", Weight = 100 }}", backend(i)))
            .collect();
        t.push_str(&format!(
            "[[LoadBalancers]]\nLoadBalancerId = \"lb-hc-{lb}\"\nAddress = \"10.201.0.{}\"\nBackendServers = [{}]\n\
             [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = {PORT}\n\
             HealthCheckInterval = {INTERVAL_S}\nHealthCheckTimeout = 5\nHealthyThreshold = 3\nUnhealthyThreshold = 3\n",
            lb + 1,
            servers.join(", ")
        ));
    }
    t
}

fn haproxy_config(stats: &Path) -> String {
    // The frontend is there only because HAProxy refuses to start without a listener.
    let mut t = format!(
        "global\n    maxconn 4096\n    stats socket {} mode 600 level user\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout check 5s\n\
         frontend fe\n    bind 127.0.0.1:18080\n    default_backend hc\n\
         backend hc\n",
        stats.display()
    );
    for i in 0..BACKENDS {
        t.push_str(&format!(
            "    server s{i} {}:{PORT} check inter {INTERVAL_S}s fall 3 rise 3\n",
            backend(i)
        ));
    }
    t
}

/// Runs the benchmark (needs root: it creates a network namespace).
pub fn run() -> anyhow::Result<Report> {
    let version = haproxy_version()?;
    raise_nofile();
    let cfg = config::parse(&config_text(), "bench-health.toml").context("benchmark config")?;
    let ns = Netns::create()?;
    let acceptor = Acceptor::start()?;
    let capture = Capture::start()?;
    let (slb, slb_engine) = measure_slb(&cfg, &capture)?;
    let (haproxy, haproxy_servers_up) = measure_haproxy(&capture)?;
    drop(capture);
    drop(acceptor);
    drop(ns);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ok(Report {
        backends: BACKENDS,
        interval_s: INTERVAL_S,
        warmup_s: WARMUP.as_secs_f64(),
        window_s: WINDOW.as_secs_f64(),
        cpu_ratio_slb_over_haproxy: ratio(slb.cpu_percent_of_core, haproxy.cpu_percent_of_core),
        cpu_per_check_ratio_slb_over_haproxy: ratio(slb.cpu_us_per_check, haproxy.cpu_us_per_check),
        slb,
        slb_engine,
        haproxy,
        haproxy_version: version,
        haproxy_servers_up,
    })
}

fn haproxy_version() -> anyhow::Result<String> {
    let out = match Command::new("haproxy").arg("-v").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("haproxy is not installed (the peer of this benchmark); `cargo xtask setup` installs it")
        }
        r => r.context("running `haproxy -v`")?,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
    Ok(text
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .to_string())
}

/// One TCP connect holds a descriptor for a few microseconds, but up to
/// `health::MAX_IN_FLIGHT` may be open at once.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid, initialised rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            // Failing to raise only matters if descriptors run out, which shows as failures.
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The namespace the backends live in; removed when dropped.
struct Netns;

impl Netns {
    fn create() -> anyhow::Result<Netns> {
        // A namespace left by an interrupted run would make `ip netns add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", NS])?;
        let ns = Netns;
        ip(&["-n", NS, "link", "set", "lo", "up"])?;
        // Every address of the /16 is local, so 10,000 backends need no interfaces.
        ip(&[
            "-n",
            NS,
            "route",
            "add",
            "local",
            "10.200.0.0/16",
            "dev",
            "lo",
        ])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the benchmark's namespace. Sockets it creates,
/// and threads it spawns, stay in that namespace.
fn in_netns<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{NS}");
    let netns = File::open(&path).with_context(|| format!("opening {path}"))?;
    thread::Builder::new()
        .name("hc-netns".into())
        .spawn(move || {
            // setns(CLONE_NEWNET) changes only this thread, which ends with `f`.
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {NS}"))?;
            f()
        })
        .context("spawning a thread")?
        .join()
        .map_err(|_| anyhow!("the thread in network namespace {NS} panicked"))?
}

/// Accepts and closes every connection to any backend.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start() -> anyhow::Result<Acceptor> {
        let listener = in_netns(|| {
            let fd = socket::socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .context("socket")?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
            socket::bind(
                fd.as_raw_fd(),
                &SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)),
            )
            .with_context(|| format!("binding 0.0.0.0:{PORT}"))?;
            // The largest queue the namespace allows, so connections that arrive between two
            // polls are never refused.
            socket::listen(&fd, Backlog::MAXALLOWABLE).context("listen")?;
            Ok(TcpListener::from(fd))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("hc-accept".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Polling, not blocking: a thread asleep in accept() would be woken
                        // from the checker's own connect() (loopback delivers in the sender's
                        // context), charging the wake-up to the checker.
                        match listener.accept() {
                            // Closed at once with a FIN; the engine closes with a reset, so
                            // no TIME_WAIT builds up on either side.
                            Ok(conn) => drop(conn),
                            Err(_) => thread::sleep(POLL),
                        }
                    }
                })
                .context("spawning the acceptor")?
        };
        Ok(Acceptor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `SIOCGSTAMPNS` on 64-bit targets (linux/sockios.h `SIOCGSTAMPNS_OLD`, which libc lacks).
const SIOCGSTAMPNS: libc::Ioctl = 0x8907;

/// When the last packet read from a packet socket arrived (`SIOCGSTAMPNS`, wall clock).
fn packet_time(fd: &OwnedFd) -> Option<SystemTime> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: SIOCGSTAMPNS writes one timespec into `ts`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    (rc == 0).then(|| UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `SO_ATTACH_FILTER` (asm-generic/socket.h; the same on x86-64 and arm64).
const SO_ATTACH_FILTER: libc::c_int = 26;
/// Ethernet header on `lo`.
const L2: u32 = 14;

/// Classic BPF: IPv4 TCP segments to port [`PORT`] with SYN set and ACK clear, unfragmented.
fn syn_filter() -> [libc::sock_filter; 12] {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MSH, BPF_RET,
    };
    // Jump offsets count from the next instruction; `drop` is the last one.
    [
        stmt(BPF_LD | BPF_B | BPF_ABS, L2 + 9),   // 0: IP protocol
        jump(BPF_JMP | BPF_JEQ | BPF_K, 6, 0, 9), // 1: TCP, else drop
        stmt(BPF_LD | BPF_H | BPF_ABS, L2 + 6),   // 2: flags and fragment offset
        jump(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 7, 0), // 3: a later fragment: drop
        stmt(BPF_LDX | BPF_B | BPF_MSH, L2),      // 4: X = IP header length
        stmt(BPF_LD | BPF_H | BPF_IND, L2 + 2),   // 5: destination port
        jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(PORT), 0, 4), // 6
        stmt(BPF_LD | BPF_B | BPF_IND, L2 + 13),  // 7: TCP flags
        stmt(BPF_ALU | BPF_AND | BPF_K, 0x12),    // 8: SYN | ACK
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1), // 9: SYN alone
        stmt(BPF_RET | BPF_K, 64),                // 10: accept, first 64 bytes
        stmt(BPF_RET | BPF_K, 0),                 // 11: drop
    ]
}

/// Every connection attempt to a backend, seen on `lo` as a SYN: HAProxy's L4 checks answer
/// the SYN-ACK with a reset and never complete the handshake, so an acceptor would not see
/// them. Records when (the kernel's receive timestamp) and to which backend while a window is
/// open.
struct Capture {
    fd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    syns: Arc<AtomicU64>,
    /// Kernel receive time (wall clock) and destination of each SYN.
    events: Arc<Mutex<Vec<(SystemTime, u32)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    fn start() -> anyhow::Result<Capture> {
        let fd = Arc::new(in_netns(|| {
            let protocol = (libc::ETH_P_IP as u16).to_be();
            // SAFETY: plain socket call.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::c_int::from(protocol),
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            // SAFETY: `raw` is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let filter = syn_filter();
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_ATTACH_FILTER,
                    std::ptr::from_ref(&prog).cast(),
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("SO_ATTACH_FILTER");
            }
            // Room for seconds of SYNs between two polls.
            socket::setsockopt(&fd, sockopt::RcvBufForce, &(16 << 20)).context("SO_RCVBUFFORCE")?;
            Ok(fd)
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let syns = Arc::new(AtomicU64::new(0));
        let events = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (fd, stop, recording, syns, events) = (
                fd.clone(),
                stop.clone(),
                recording.clone(),
                syns.clone(),
                events.clone(),
            );
            thread::Builder::new()
                .name("hc-capture".into())
                .spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        // Polling, like the acceptor, so the checker never wakes this thread.
                        let Ok(n) = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                        else {
                            thread::sleep(POLL);
                            continue;
                        };
                        // The filter passed only TCP SYNs, so the destination address is there.
                        let dst = L2 as usize + 16;
                        let Some(&[a, b, c, d]) = buf[..n].get(dst..dst + 4) else {
                            continue;
                        };
                        syns.fetch_add(1, Ordering::Relaxed);
                        if !recording.load(Ordering::Relaxed) {
                            continue;
                        }
                        let Some(at) = packet_time(&fd) else {
                            continue;
                        };
                        events
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((at, u32::from_be_bytes([a, b, c, d])));
                    }
                })
                .context("spawning the SYN capture")?
        };
        Ok(Capture {
            fd,
            stop,
            recording,
            syns,
            events,
            thread: Some(thread),
        })
    }

    fn syns(&self) -> u64 {
        self.syns.load(Ordering::Relaxed)
    }

    /// SYNs the kernel dropped because the reader fell behind, since the last call.
    fn drops(&self) -> u64 {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are valid for writing and sized for PACKET_STATISTICS.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                std::ptr::from_mut(&mut stats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            u64::from(stats.tp_drops)
        } else {
            0
        }
    }

    fn record(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    fn take_events(&self) -> Vec<(SystemTime, u32)> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU seconds of the threads of this process named `name`.
fn own_threads_cpu(name: &str) -> anyhow::Result<(f64, usize)> {
    let (mut ticks, mut threads) = (0, 0);
    for entry in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let dir = entry.context("reading /proc/self/task")?.path();
        // A thread that ended between the listing and the read has nothing left to count.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            ticks += stat_ticks(&stat)?;
            threads += 1;
        }
    }
    Ok((ticks as f64 / clock_ticks(), threads))
}

/// CPU seconds of a whole process (every thread).
fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(stat_ticks(&stat)? as f64 / clock_ticks())
}

/// utime + stime from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name may hold spaces and parentheses; the fields follow the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat line")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .context("short /proc stat line")?
            .parse()
            .context("parsing /proc stat")
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Gaps between successive starts per backend, and starts per bucket, of the starts inside
/// `[from, to)`; buckets cover the window's whole 100 ms slices only.
fn spread(starts: &[(Instant, u32)], from: Instant, to: Instant) -> Spread {
    let mut per: HashMap<u32, Vec<Instant>> = HashMap::new();
    let buckets = ((to - from).as_nanos() / BUCKET.as_nanos()) as usize;
    let mut counts = vec![0u64; buckets];
    for &(at, key) in starts.iter().filter(|(at, _)| *at >= from && *at < to) {
        per.entry(key).or_default().push(at);
        let b = (at.duration_since(from).as_nanos() / BUCKET.as_nanos()) as usize;
        if let Some(c) = counts.get_mut(b) {
            *c += 1;
        }
    }
    let mut gaps = Vec::new();
    for times in per.values_mut() {
        times.sort();
        gaps.extend(
            times
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0),
        );
    }
    let interval_ms = INTERVAL.as_secs_f64() * 1000.0;
    let mut dev: Vec<f64> = gaps.iter().map(|g| (g - interval_ms).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mean = counts.iter().sum::<u64>() as f64 / buckets.max(1) as f64;
    let max = counts.iter().copied().max().unwrap_or(0);
    Spread {
        gaps: gaps.len(),
        gap_mean_ms: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
        deviation_p50_ms: percentile(&dev, 0.5),
        deviation_p99_ms: percentile(&dev, 0.99),
        deviation_max_ms: dev.last().copied().unwrap_or(f64::NAN),
        per_bucket_min: counts.iter().copied().min().unwrap_or(0),
        per_bucket_mean: mean,
        per_bucket_max: max,
        per_bucket_max_over_mean: if mean > 0.0 { max as f64 / mean } else { 0.0 },
    }
}

/// What the checker measured over one window, besides its own failure count.
struct Window {
    from: Instant,
    to: Instant,
    cpu_s: f64,
    drops: u64,
    /// SYNs inside the window.
    events: Vec<(Instant, u32)>,
}

/// Records the SYNs and `cpu` over the window, for a checker already warmed up.
fn window(capture: &Capture, cpu: impl Fn() -> anyhow::Result<f64>) -> anyhow::Result<Window> {
    capture.take_events();
    capture.drops();
    capture.record(true);
    // The capture reads with a lag of up to one poll; recording from a little before the
    // window to a little after it, then cutting by kernel timestamp, loses no SYN at the edges.
    thread::sleep(EDGE);
    let (cpu0, from, wall0) = (cpu()?, Instant::now(), SystemTime::now());
    thread::sleep(WINDOW);
    let (cpu1, to) = (cpu()?, Instant::now());
    thread::sleep(EDGE);
    capture.record(false);
    // Kernel timestamps are wall-clock; one reading of both clocks maps them onto Instants.
    let events = capture
        .take_events()
        .into_iter()
        .filter_map(|(wall, key)| {
            // Out of range only if the wall clock jumped; such a SYN cannot be placed.
            let at = match wall.duration_since(wall0) {
                Ok(d) => from.checked_add(d),
                Err(e) => from.checked_sub(e.duration()),
            }?;
            Some((at, key))
        })
        .filter(|(at, _)| *at >= from && *at < to)
        .collect();
    Ok(Window {
        from,
        to,
        cpu_s: cpu1 - cpu0,
        drops: capture.drops(),
        events,
    })
}

fn side(w: &Window, threads: usize, failures: u64) -> Side {
    let secs = (w.to - w.from).as_secs_f64();
    let syns = w.events.len();
    Side {
        threads,
        cpu_s: w.cpu_s,
        cpu_percent_of_core: w.cpu_s / secs * 100.0,
        checks_per_s: syns as f64 / secs,
        capture_drops: w.drops,
        cpu_us_per_check: if syns > 0 {
            w.cpu_s * 1e6 / syns as f64
        } else {
            f64::NAN
        },
        failures,
        spread: spread(&w.events, w.from, w.to),
    }
}

/// One probe as the engine reported it.
struct Probe {
    started: Instant,
    target: u32,
    latency: Duration,
    failure: Option<health::Failure>,
}

fn target_key(addr: SocketAddr) -> u32 {
    match addr {
        SocketAddr::V4(a) => u32::from(*a.ip()),
        // Every backend here is IPv4.
        SocketAddr::V6(_) => 0,
    }
}

fn measure_slb(cfg: &config::Config, capture: &Capture) -> anyhow::Result<(Side, EngineView)> {
    // Worker threads are spawned while the runtime is built, so they start in the namespace
    // and every probe socket they open is made there.
    let rt = in_netns(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SLB_THREAD)
            .enable_all()
            .build()
            .context("building the checker runtime")
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<health::Observation>();
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let collector = {
        let probes = probes.clone();
        thread::Builder::new()
            .name("hc-collect".into())
            .spawn(move || loop {
                // Polling instead of a blocking receive keeps the receiver from being parked,
                // so sending an observation never has to wake a thread from the checker's.
                thread::sleep(DRAIN);
                let mut batch = Vec::new();
                let closed = loop {
                    match rx.try_recv() {
                        Ok(o) => batch.push(Probe {
                            started: o.started.into_std(),
                            target: target_key(o.check.target),
                            latency: o.latency,
                            failure: o.result.err(),
                        }),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break false,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break true,
                    }
                };
                probes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(batch);
                if closed {
                    return;
                }
            })
            .context("spawning the observation collector")?
    };
    let mut engine = health::Engine::with_observer(Some(tx));
    {
        let _entered = rt.enter();
        engine.apply(cfg);
    }
    let checks = engine.status().snapshot().len();
    if checks != BACKENDS {
        bail!("the engine runs {checks} checks, expected {BACKENDS}");
    }
    thread::sleep(WARMUP);
    let measured = window(capture, || own_threads_cpu(SLB_THREAD).map(|(s, _)| s));
    let (_, threads) = own_threads_cpu(SLB_THREAD)?;
    drop(engine);
    rt.shutdown_timeout(Duration::from_secs(5));
    // The runtime is gone, so the last sender went with it and the collector ends.
    collector
        .join()
        .map_err(|_| anyhow!("the observation collector panicked"))?;
    let w = measured?;
    let probes = std::mem::take(&mut *probes.lock().unwrap_or_else(PoisonError::into_inner));
    let in_window: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.started >= w.from && p.started < w.to)
        .collect();
    let failures = in_window.iter().filter(|p| p.failure.is_some()).count() as u64;
    let mut failure_examples: Vec<String> = Vec::new();
    for f in in_window.iter().filter_map(|p| p.failure.as_ref()) {
        let s = f.to_string();
        if failure_examples.len() < 5 && !failure_examples.contains(&s) {
            failure_examples.push(s);
        }
    }
    let mut lat: Vec<f64> = in_window
        .iter()
        .map(|p| p.latency.as_secs_f64() * 1e6)
        .collect();
    lat.sort_by(f64::total_cmp);
    let starts: Vec<(Instant, u32)> = in_window.iter().map(|p| (p.started, p.target)).collect();
    let engine = EngineView {
        probes_per_s: in_window.len() as f64 / (w.to - w.from).as_secs_f64(),
        failures,
        failure_examples,
        latency_p50_us: percentile(&lat, 0.5),
        latency_p99_us: percentile(&lat, 0.99),
        latency_max_us: lat.last().copied().unwrap_or(f64::NAN),
        spread: spread(&starts, w.from, w.to),
    };
    Ok((side(&w, threads, failures), engine))
}

/// HAProxy in the namespace; stopped when dropped.
struct Haproxy {
    child: Child,
    files: Vec<PathBuf>,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Per-server rows of HAProxy's `show stat`: (failed checks so far, servers UP).
fn haproxy_stat(sock: &Path) -> anyhow::Result<(u64, usize)> {
    let mut s = UnixStream::connect(sock)
        .with_context(|| format!("connecting to HAProxy's stats socket {}", sock.display()))?;
    s.write_all(b"show stat\n")
        .context("asking HAProxy for its stats")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .context("reading HAProxy's stats")?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .context("HAProxy's stats have no header")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("HAProxy's stats have no {name} column"))
    };
    let (svname, status, chkfail) = (col("svname")?, col("status")?, col("chkfail")?);
    let (mut failed, mut up) = (0, 0);
    for row in lines {
        let f: Vec<&str> = row.split(',').collect();
        let name = f.get(svname).copied().unwrap_or_default();
        if name.is_empty() || name == "FRONTEND" || name == "BACKEND" {
            continue;
        }
        failed += f
            .get(chkfail)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if f.get(status).is_some_and(|s| s.starts_with("UP")) {
            up += 1;
        }
    }
    Ok((failed, up))
}

fn measure_haproxy(capture: &Capture) -> anyhow::Result<(Side, usize)> {
    let dir = std::env::temp_dir();
    let tag = format!("slb-bench-hc-{}", std::process::id());
    let (cfg_path, sock, log) = (
        dir.join(format!("{tag}.cfg")),
        dir.join(format!("{tag}.sock")),
        dir.join(format!("{tag}.log")),
    );
    std::fs::write(&cfg_path, haproxy_config(&sock))
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    // `ip netns exec` execs HAProxy, so the child's pid is HAProxy's.
    let child = Command::new("ip")
        .args(["netns", "exec", NS, "haproxy", "-db", "-f"])
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("duplicating the log file")?)
        .stderr(log_file)
        .spawn()
        .context("starting haproxy")?;
    let mut hap = Haproxy {
        child,
        files: vec![cfg_path, sock.clone(), log.clone()],
    };
    let pid = hap.child.id();
    let log_tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    };
    // Started once its checks reach the backends.
    let before = capture.syns();
    let deadline = Instant::now() + HAPROXY_START_TIMEOUT;
    while capture.syns() == before {
        if let Some(status) = hap.child.try_wait().context("waiting for haproxy")? {
            bail!("haproxy exited ({status}):\n{}", log_tail(&log));
        }
        if Instant::now() > deadline {
            bail!(
                "haproxy checked nothing within {} s:\n{}",
                HAPROXY_START_TIMEOUT.as_secs(),
                log_tail(&log)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != "haproxy" {
        bail!("process {pid} is {comm:?}, not haproxy");
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    // `show stat` for 10,000 servers costs HAProxy CPU, so it is read outside the window.
    thread::sleep(WARMUP);
    let (failed0, _) = haproxy_stat(&sock)?;
    let w = window(capture, || process_cpu(pid))?;
    let (failed1, up) = haproxy_stat(&sock)?;
    if let Some(status) = hap.child.try_wait().context("waiting for haproxy")? {
        bail!("haproxy exited ({status}):\n{}", log_tail(&log));
    }
    drop(hap);
    Ok((side(&w, threads, failed1.saturating_sub(failed0)), up))
}

pub fn render(r: &Report) -> String {
    let (s, h) = (&r.slb, &r.haproxy);
    let mut out = format!(
        "Health checks: {} backends, TCP connect every {} s, {:.0} s window each, one after the other\n\n\
         | | slb | HAProxy {} | slb / HAProxy |\n| --- | ---: | ---: | ---: |\n",
        r.backends, r.interval_s, r.window_s, r.haproxy_version
    );
    let row = |out: &mut String, name: &str, a: String, b: String, ratio: String| {
        out.push_str(&format!("| {name} | {a} | {b} | {ratio} |\n"));
    };
    row(
        &mut out,
        "checker CPU, % of one core",
        format!("{:.1}", s.cpu_percent_of_core),
        format!("{:.1}", h.cpu_percent_of_core),
        format!("{:.2}", r.cpu_ratio_slb_over_haproxy),
    );
    row(
        &mut out,
        "CPU µs per check",
        format!("{:.1}", s.cpu_us_per_check),
        format!("{:.1}", h.cpu_us_per_check),
        format!("{:.2}", r.cpu_per_check_ratio_slb_over_haproxy),
    );
    row(
        &mut out,
        "checks/s (SYNs seen at the backends)",
        format!("{:.0}", s.checks_per_s),
        format!("{:.0}", h.checks_per_s),
        format!("{:.2}", s.checks_per_s / h.checks_per_s),
    );
    row(
        &mut out,
        "failed checks",
        s.failures.to_string(),
        h.failures.to_string(),
        String::new(),
    );
    row(
        &mut out,
        "gap between checks of a backend, mean ms",
        format!("{:.1}", s.spread.gap_mean_ms),
        format!("{:.1}", h.spread.gap_mean_ms),
        String::new(),
    );
    row(
        &mut out,
        "\\|gap − 2 s\\| p50 / p99 / max ms",
        format!(
            "{:.1} / {:.1} / {:.1}",
            s.spread.deviation_p50_ms, s.spread.deviation_p99_ms, s.spread.deviation_max_ms
        ),
        format!(
            "{:.1} / {:.1} / {:.1}",
            h.spread.deviation_p50_ms, h.spread.deviation_p99_ms, h.spread.deviation_max_ms
        ),
        String::new(),
    );
    row(
        &mut out,
        "checks per 100 ms min / mean / max (max/mean)",
        format!(
            "{} / {:.0} / {} ({:.2})",
            s.spread.per_bucket_min,
            s.spread.per_bucket_mean,
            s.spread.per_bucket_max,
            s.spread.per_bucket_max_over_mean
        ),
        format!(
            "{} / {:.0} / {} ({:.2})",
            h.spread.per_bucket_min,
            h.spread.per_bucket_mean,
            h.spread.per_bucket_max,
            h.spread.per_bucket_max_over_mean
        ),
        String::new(),
    );
    let e = &r.slb_engine;
    out.push_str(&format!(
        "\nslb engine: {:.0} probes/s, {} failed{}, latency p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; \
         HAProxy: {} of {} servers UP; threads: slb {}, HAProxy {}\n",
        e.probes_per_s,
        e.failures,
        if e.failure_examples.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.failure_examples.join("; "))
        },
        e.latency_p50_us,
        e.latency_p99_us,
        e.latency_max_us,
        r.haproxy_servers_up,
        r.backends,
        s.threads,
        h.threads
    ));
    out
}
