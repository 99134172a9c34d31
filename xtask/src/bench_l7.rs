//! `cargo xtask bench l7`: the agent's HTTP and HTTPS listeners next to nginx and HAProxy as
//! reverse proxies of the same backend, driven by the same generators, written to
//! `bench/results/l7.json`.
//!
//! Lab `slbl7b-*` (n = 80, one backend): the client namespace runs the generators; `slbl7b-b1`
//! runs nginx answering a fixed 64-byte body on :8080; `slbl7b-lb` runs slb, nginx and HAProxy
//! in turn on VIP:80 (HTTP) and VIP:443 (HTTPS, TLS 1.2 as `tls_cipher_policy_1_2`, RSA 2048),
//! each with 2 workers, logging off, keep-alive to the backend where the proxy has it.
//!
//! First, once per proxy, idle memory: the RSS of the proxy's processes before and after 10,000
//! HTTP keep-alive connections (one request each, then idle), and the same over HTTPS, each on
//! a freshly started proxy; then whether the proxy resumes a session offered back to it.
//!
//! Then the load, in [`ROUNDS`] rounds. Each round runs wrk straight against the backend (the
//! baseline of "latency added"), then case by case ([`Case`]) every proxy in turn, each freshly
//! started for the case and stopped after it:
//! 1. wrk over HTTP, then HTTPS: keep-alive (64 connections), a new connection per request
//!    (`Connection: close`) and one keep-alive connection (unloaded latency); req/s, p50/p99
//!    and the proxy's CPU over the window;
//! 2. full TLS handshakes per second (`bench_l7_client.py`).
//!
//! On a 2-core machine one run is noise (the same code measured three times gave slb / nginx
//! per CPU-second 0.80, 0.96 and 1.14, and one proxy's rounds spread by a third), so the
//! proxies are compared within a round, where their runs of a case follow each other within
//! seconds: a ratio reported is the median of the per-round ratios. The order of the proxies
//! rotates from case to case and round to round, so that none always runs first or last. Each
//! proxy's own figures are medians over the rounds; error counts are summed instead, so that an
//! error in any round shows; each record keeps its per-round throughput and p99 under `rounds`.
use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    errno::Errno,
    sys::{
        resource::{getrlimit, setrlimit, Resource},
        signal::{killpg, Signal},
    },
    unistd::Pid,
};
use serde_json::{json, Map, Value};
use xtask::{
    cmd,
    lab::{self, in_netns, Lab},
};

use crate::{
    agent::{unload, Agent},
    bench::{metadata, wait_ready, write_results, CpuTimes},
    setup, OwnedDir, Workspace,
};

/// Relative to the workspace root.
const RESULTS: &str = "bench/results/l7.json";
/// Where a lab of the bench's loads lives. The bench and the profile training of a build
/// ([`train`]) each have their own, so that a build may run while a bench does.
#[derive(Clone, Copy)]
struct Site {
    prefix: &'static str,
    n: u8,
    pins: &'static str,
}
const BENCH: Site = Site {
    prefix: "slbl7b",
    n: 80,
    pins: "/sys/fs/bpf/slb-bench-l7",
};
const TRAINING: Site = Site {
    prefix: "slbl7t",
    n: 81,
    pins: "/sys/fs/bpf/slb-train-l7",
};
const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;
const BACKEND_PORT: u16 = 8080;
/// Worker threads or processes of every proxy: the agent serves its listeners on one
/// single-threaded runtime per core, so nginx and HAProxy get one worker per core too.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
/// wrk's connections under load, and its threads (one per core).
const CONNECTIONS: usize = 64;
const WRK_THREADS: usize = 2;
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
/// What profile training gives each wrk variant.
const TRAINING_WINDOW: Duration = Duration::from_secs(2);
/// Rounds of the load part; every figure reported is the median over them. With three, the
/// medians of consecutive runs with small code changes between them still differed by up to
/// 0.15 (HTTPS keep-alive per CPU-second: 0.89, then 1.04).
const ROUNDS: usize = 5;
/// Idle keep-alive connections whose memory is measured, and the client threads opening them.
const IDLE: usize = 10_000;
const IDLE_OPENERS: usize = 8;
/// Lets a proxy finish the work of the last connections before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Handshake client threads: enough to keep both proxy workers busy while each waits on the
/// network.
const HANDSHAKE_THREADS: usize = 8;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The backend's answer: `BODY_BYTES` × `b`.
const BODY_BYTES: usize = 64;
/// `tls_cipher_policy_1_2` (behaviour §10.3, B10.11): what nginx and HAProxy are given too.
const POLICY_1_2_CIPHERS: &str = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:AES128-GCM-SHA256:AES256-GCM-SHA384:\
AES128-SHA256:AES256-SHA256:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:\
DES-CBC3-SHA:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA";
const WRK_SCRIPT: &str = include_str!("bench_l7_wrk.lua");
const CLIENT: &str = include_str!("bench_l7_client.py");

pub fn l7(ws: &Workspace) -> Result<()> {
    setup::run()?;
    let slb = ws.build_slb()?;
    let versions = versions()?;
    let report = in_lab(&slb, BENCH, |bench| bench.run(versions))?;
    let path = write_results(
        ws,
        RESULTS,
        &json!({ "metadata": metadata()?, "l7": report }),
    )?;
    print!("{}", markdown(&report));
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// Runs the agent at `slb`, built with `-Cprofile-generate`, through the bench's HTTP and
/// HTTPS loads for a few seconds each, so that the profile it writes on exit covers the
/// proxy's work.
pub fn train(slb: &Path) -> Result<()> {
    in_lab(slb, TRAINING, |bench| {
        let mut backend = bench.start_backend()?;
        bench.with_proxy(Proxy::Slb, |_| {
            // Handshakes are OpenSSL's work, which the profile does not cover.
            for case in Case::ALL {
                if let Case::Wrk { proto, port, load } = case {
                    println!("==> training: {}", case.label());
                    let url = format!("{proto}://{}/", SocketAddr::new(bench.vip(), port));
                    bench.wrk(&url, load, TRAINING_WINDOW)?;
                }
            }
            Ok(Value::Null)
        })?;
        backend.stop()
    })
}

/// Brings the lab of `site` up with the bench's files, runs `f`, and tears it all down. Ctrl-C
/// ends the current step (wrk and the Python client share our process group and stop; the
/// proxies have their own and are stopped in order).
fn in_lab<T>(slb: &Path, site: Site, f: impl FnOnce(&Bench) -> Result<T>) -> Result<T> {
    let interrupted = crate::interrupted()?;
    let nofile = raise_nofile()?;
    let scratch =
        OwnedDir(std::env::temp_dir().join(format!("{}-{}", site.prefix, std::process::id())));
    scratch.remove()?;
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("creating {}", scratch.0.display()))?;
    let pins = OwnedDir(site.pins.into());
    // A crashed earlier run may have left pinned maps that the agent would pick up again.
    pins.remove()?;
    let lab = Lab::up(site.prefix, site.n, 1)?;
    let bench = Bench {
        slb: slb.to_path_buf(),
        site,
        nofile,
        dir: scratch.0.clone(),
        lab,
        interrupted,
    };
    let out = bench.prepare().and_then(|()| f(&bench));
    let Bench { lab, .. } = bench;
    let down = lab.down().context("tearing the bench lab down");
    let cleaned = pins.remove().and(scratch.remove());
    let out = out?;
    down.and(cleaned)?;
    Ok(out)
}

/// Raises the soft RLIMIT_NOFILE to the hard one (raising the hard limit needs CAP_SYS_RESOURCE,
/// which a container may not have); every process started inherits it.
fn raise_nofile() -> Result<u64> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

/// Versions of the peers and generators, for the report.
fn versions() -> Result<Value> {
    // `nginx -v` answers on stderr, `wrk -v` exits 1 after printing its version: only the text
    // matters.
    let first_line = |program: &str, arg: &str| -> Result<String> {
        let out = Command::new(program).arg(arg).output().with_context(|| {
            format!("running `{program} {arg}` (`cargo xtask setup` installs it)")
        })?;
        let text = [out.stdout, out.stderr].concat();
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("?")
            .trim()
            .to_string())
    };
    Ok(json!({
        "nginx": first_line("nginx", "-v")?,
        "haproxy": first_line("haproxy", "-v")?,
        "wrk": first_line("wrk", "-v")?,
        "python": first_line("python3", "--version")?,
        "openssl": first_line("openssl", "version")?,
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Slb,
    Nginx,
    Haproxy,
}

impl Proxy {
    const ALL: [Proxy; 3] = [Proxy::Slb, Proxy::Nginx, Proxy::Haproxy];

    fn key(self) -> &'static str {
        match self {
            Proxy::Slb => "slb",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }
}

/// The wrk variants.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    KeepAlive,
    /// `Connection: close`: the proxy closes after each response and wrk reconnects.
    NewConnection,
    /// One keep-alive connection: latency without queueing.
    OneConnection,
}

impl Load {
    const ALL: [Load; 3] = [Load::KeepAlive, Load::NewConnection, Load::OneConnection];

    fn key(self) -> &'static str {
        match self {
            Load::KeepAlive => "keepalive",
            Load::NewConnection => "new_connection",
            Load::OneConnection => "one_connection",
        }
    }

    fn connections(self) -> usize {
        match self {
            Load::OneConnection => 1,
            Load::KeepAlive | Load::NewConnection => CONNECTIONS,
        }
    }
}

/// What a round measures on every proxy in turn, each time on a freshly started one.
#[derive(Clone, Copy)]
enum Case {
    Wrk {
        proto: &'static str,
        port: u16,
        load: Load,
    },
    /// Full TLS handshakes per second.
    Handshakes,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::wrk("http", HTTP_PORT, Load::KeepAlive),
        Case::wrk("http", HTTP_PORT, Load::NewConnection),
        Case::wrk("http", HTTP_PORT, Load::OneConnection),
        Case::wrk("https", HTTPS_PORT, Load::KeepAlive),
        Case::wrk("https", HTTPS_PORT, Load::NewConnection),
        Case::wrk("https", HTTPS_PORT, Load::OneConnection),
        Case::Handshakes,
    ];

    const fn wrk(proto: &'static str, port: u16, load: Load) -> Case {
        Case::Wrk { proto, port, load }
    }

    /// Where its record sits in a proxy's results.
    fn path(self) -> Vec<&'static str> {
        match self {
            Case::Wrk { proto, load, .. } => vec![proto, load.key()],
            Case::Handshakes => vec!["tls_handshakes"],
        }
    }

    fn label(self) -> String {
        match self {
            Case::Wrk { proto, load, .. } => format!("wrk over {proto}, {}", load.key()),
            Case::Handshakes => "full TLS handshakes".into(),
        }
    }
}

struct Bench {
    slb: PathBuf,
    site: Site,
    /// RLIMIT_NOFILE of every process started.
    nofile: u64,
    /// Configurations, certificate, scripts and logs.
    dir: PathBuf,
    lab: Lab,
    interrupted: Arc<AtomicBool>,
}

impl Bench {
    fn vip(&self) -> IpAddr {
        IpAddr::V4(self.lab.vip_v4())
    }

    fn backend(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.lab.backends()[0].v4), BACKEND_PORT)
    }

    fn check(&self) -> Result<()> {
        if self.interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// `program` in the client namespace.
    fn in_client(&self, program: &str) -> Command {
        lab::netns_command(&self.lab.client().ns, program)
    }

    /// The certificate, every configuration, the client scripts; sysctls of the lab.
    fn prepare(&self) -> Result<()> {
        cmd::run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
                .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "2"])
                .args(["-subj", "/CN=bench.example"])
                .current_dir(&self.dir),
        )
        .context("making the bench certificate")?;
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.join(name)).with_context(|| format!("reading {name}"))
        };
        let files = [
            ("haproxy.pem", read("cert.pem")? + &read("key.pem")?),
            ("backend.conf", self.backend_nginx_conf()),
            ("nginx.conf", self.proxy_nginx_conf()),
            ("haproxy.cfg", self.haproxy_cfg()),
            ("slb.toml", self.slb_toml()),
            ("wrk.lua", WRK_SCRIPT.to_string()),
        ];
        for (name, text) in files {
            let path = self.dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        // The new-connection runs open and close a connection per request, so TIME_WAIT
        // sockets would use up the default 28k ephemeral ports within seconds; the same for
        // every proxy and for the generators.
        for ns in [self.lab.lb_ns(), &self.lab.client().ns] {
            lab::set_sysctls(
                ns,
                &[
                    ("net/ipv4/ip_local_port_range", "1024 65535"),
                    ("net/ipv4/tcp_tw_reuse", "1"),
                ],
            )?;
        }
        Ok(())
    }

    /// The backend's nginx, serving.
    fn start_backend(&self) -> Result<Daemon> {
        println!(
            "==> backend: nginx on {} ({BODY_BYTES}-byte body)",
            self.backend()
        );
        let b = &self.lab.backends()[0];
        let mut backend = Daemon::start(
            &b.ns,
            "nginx",
            &nginx_args(&self.dir, "backend"),
            self.dir.join("backend.log"),
        )?;
        self.wait_serving(&[self.backend()], &mut || backend.alive())?;
        Ok(backend)
    }

    fn run(&self, versions: Value) -> Result<Value> {
        let mut backend = self.start_backend()?;
        let backend_pids = process_tree(backend.pid())?;

        let mut proxies = json!({});
        for proxy in Proxy::ALL {
            proxies[proxy.key()] = self.measure_once(proxy)?;
        }
        let url = format!("http://{}/", self.backend());
        // Each round: `direct` and one entry per proxy, shaped as the proxy's results.
        let mut rounds = Vec::new();
        for round in 0..ROUNDS {
            println!(
                "==> round {}/{ROUNDS}: straight to the backend: wrk {WINDOW:?} per variant",
                round + 1
            );
            let mut direct = Map::new();
            for load in Load::ALL {
                direct.insert(load.key().into(), self.load_run(&url, load, &backend_pids)?);
            }
            let mut r = json!({ "direct": direct });
            for (c, case) in Case::ALL.iter().enumerate() {
                println!(
                    "==> round {}/{ROUNDS}: {}: every proxy in turn",
                    round + 1,
                    case.label()
                );
                for i in 0..Proxy::ALL.len() {
                    let proxy = Proxy::ALL[(round + c + i) % Proxy::ALL.len()];
                    let mut record = self.with_proxy(proxy, |pids| self.measure(*case, pids))?;
                    if let Case::Wrk { load, .. } = case {
                        add_latency_added(&mut record, &r["direct"][load.key()]);
                    }
                    *at_mut(&mut r[proxy.key()], &case.path()) = record;
                }
            }
            rounds.push(r);
        }
        backend.stop()?;

        let merged =
            |path: &[&str]| merge_rounds(&rounds.iter().map(|r| at(r, path)).collect::<Vec<_>>());
        let mut direct = json!({});
        for load in Load::ALL {
            direct[load.key()] = merged(&["direct", load.key()]);
        }
        for proxy in Proxy::ALL {
            let results = &mut proxies[proxy.key()];
            for case in Case::ALL {
                let mut path = vec![proxy.key()];
                path.extend(case.path());
                *at_mut(results, &case.path()) = merged(&path);
            }
        }

        let slb_over_nginx = ratios(&rounds, &proxies, Proxy::Slb, Proxy::Nginx);
        let verdicts = target_verdicts(&slb_over_nginx);
        let met = verdicts.values().all(|v| v["met"] == true);
        let workers = workers();
        Ok(json!({
            "topology": format!(
                "lab {} (n = {}): client, LB and one backend namespace joined by veth pairs \
                 through the LB namespace; the proxies serve {}:{HTTP_PORT} and {}:{HTTPS_PORT}, \
                 the backend is {}",
                self.site.prefix, self.site.n, self.vip(), self.vip(), self.backend()
            ),
            "backend": format!(
                "nginx, 1 worker, `return 200` with a {BODY_BYTES}-byte body, keep-alive without \
                 a request limit; the same for every proxy"
            ),
            "proxies_setup": format!(
                "{workers} workers each (slb: a single-threaded runtime per core; nginx: \
                 worker_processes {workers}; HAProxy: nbthread {workers}); no access logs; \
                 keep-alive to the backend: nginx (upstream keepalive 64), HAProxy (http-reuse \
                 safe), slb (at most 64 idle per backend and worker); client keep-alive 60 s, at most 100 requests per client \
                 connection for slb (B9.9) and nginx (keepalive_requests 100), no limit in \
                 HAProxy; X-Forwarded-For added by all; HTTPS: TLS 1.2, the tls_cipher_policy_1_2 \
                 suites, RSA 2048 self-signed certificate, session resumption as each proxy \
                 does by default; slb's XDP program is attached to the LB's interfaces (it passes \
                 L7 traffic to the stack)"
            ),
            "generators": format!(
                "wrk {WRK_THREADS} threads: {CONNECTIONS} keep-alive connections, {CONNECTIONS} \
                 with `Connection: close` (new connection per request), 1 keep-alive connection; \
                 {}s warm-up then {}s window each. wrk re-uses its SSL object when it reconnects \
                 (SSL_clear keeps the session), so the HTTPS new-connection rows resume sessions \
                 wherever the proxy allows it (see resumes_sessions). Idle memory: \
                 {IDLE} connections from {IDLE_OPENERS} threads, one GET each, held open. TLS \
                 handshakes: Python ssl, {HANDSHAKE_THREADS} threads, TLS 1.2 \
                 ECDHE-RSA-AES128-GCM-SHA256, connect + handshake + close; no session is ever \
                 offered and every connection is checked with SSL_session_reused (the run fails \
                 if one was resumed). Idle memory and resumes_sessions are measured once; the \
                 load (wrk and TLS handshakes) in {ROUNDS} rounds, each straight to the backend \
                 first, then case by case every proxy in turn, freshly started for the case, the \
                 proxies' order rotating from case to case and round to round. Each proxy's \
                 figures are medians of the {ROUNDS} rounds, error counts their sum; `rounds` in \
                 each record holds the per-round throughput and p99. A ratio is the median of \
                 the {ROUNDS} per-round ratios (idle memory: the ratio of the single results)",
                WARMUP.as_secs(),
                WINDOW.as_secs()
            ),
            "cpu_note": "cpu_s is the user + system time of the server under test (the proxy's \
                 processes, or the backend's in `direct`) over the window from /proc/<pid>/stat; \
                 requests_per_cpu_s is the throughput per core it used. machine_cpu_busy is the \
                 whole machine's: generator, proxy and backend share its cores",
            "rlimit_nofile": self.nofile,
            "rounds": ROUNDS,
            "versions": versions,
            "direct": direct,
            "proxies": proxies,
            "ratios": {
                "slb_over_nginx": slb_over_nginx,
                "slb_over_haproxy": ratios(&rounds, &proxies, Proxy::Slb, Proxy::Haproxy),
            },
            "target": "per core, at least nginx's throughput and no worse p99 (keep-alive and new \
                 connection, HTTP and HTTPS)",
            "target_cases": verdicts,
            "meets_target": met,
        }))
    }

    /// What is measured once: idle HTTP, then idle HTTPS connections, each on a freshly started
    /// proxy (whose memory has not been shaped by earlier work); on the second, once they are
    /// closed, whether it resumes a session offered back, and its number of processes.
    fn measure_once(&self, proxy: Proxy) -> Result<Value> {
        println!(
            "==> {}: {IDLE} idle HTTP, then HTTPS connections",
            proxy.key()
        );
        let http = self.with_proxy(proxy, |pids| self.idle_memory(pids, HTTP_PORT, false))?;
        self.with_proxy(proxy, |pids| {
            let https = self.idle_memory(pids, HTTPS_PORT, true)?;
            let vip = self.vip().to_string();
            let resumed = self.client(&["resume", &vip, &HTTPS_PORT.to_string()])?;
            Ok(json!({
                "idle_memory": { "http": http, "https": https },
                "resumes_sessions": resumed["resumed"],
                "processes": pids.len(),
            }))
        })
    }

    /// One case of a round on a freshly started proxy, with its process IDs.
    fn measure(&self, case: Case, pids: &[u32]) -> Result<Value> {
        match case {
            Case::Wrk { proto, port, load } => {
                let url = format!("{proto}://{}/", SocketAddr::new(self.vip(), port));
                self.load_run(&url, load, pids)
            }
            Case::Handshakes => self.handshakes(pids),
        }
    }

    /// Starts `proxy`, runs `f` with its process IDs, stops it.
    fn with_proxy(&self, proxy: Proxy, f: impl FnOnce(&[u32]) -> Result<Value>) -> Result<Value> {
        self.check()?;
        let mut running = self.start(proxy)?;
        let pids = process_tree(running.pid())?;
        let v = f(&pids)?;
        running.stop()?;
        Ok(v)
    }

    fn start(&self, proxy: Proxy) -> Result<Running> {
        let ns = self.lab.lb_ns();
        let log = self.dir.join(format!("{}.log", proxy.key()));
        let mut running = match proxy {
            Proxy::Slb => {
                // Like nginx's and HAProxy's here, the agent's access log is off.
                let config = self.dir.join("slb.toml");
                let agent = Agent::start(&self.slb, &config, ns, true, true)?;
                let mut running = Running::Slb {
                    agent,
                    slb: self.slb.clone(),
                    ns: ns.to_string(),
                    vip: self.vip(),
                    pins: self.site.pins,
                };
                if let Running::Slb { agent, .. } = &mut running {
                    wait_ready(agent)?;
                }
                running
            }
            Proxy::Nginx => Running::Daemon(Daemon::start(
                ns,
                "nginx",
                &nginx_args(&self.dir, "nginx"),
                log,
            )?),
            Proxy::Haproxy => Running::Daemon(Daemon::start(
                ns,
                "haproxy",
                &[
                    "-db".into(),
                    "-f".into(),
                    self.dir.join("haproxy.cfg").display().to_string(),
                ],
                log,
            )?),
        };
        let listeners = [HTTP_PORT, HTTPS_PORT].map(|p| SocketAddr::new(self.vip(), p));
        self.wait_serving(&listeners, &mut || running.alive())?;
        Ok(running)
    }

    /// Waits until every address accepts a connection from the client namespace.
    fn wait_serving(
        &self,
        addrs: &[SocketAddr],
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check()?;
            alive()?;
            let addrs = addrs.to_vec();
            let refused = in_netns(&self.lab.client().ns, move || {
                addrs
                    .into_iter()
                    .find(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err())
            })?;
            match refused {
                None => return Ok(()),
                Some(a) if Instant::now() > deadline => {
                    bail!("nothing accepts connections on {a} after {READY_TIMEOUT:?}")
                }
                Some(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// wrk once for the warm-up, then for the window with the CPU of `pids` and of the machine
    /// around it.
    fn load_run(&self, url: &str, load: Load, pids: &[u32]) -> Result<Value> {
        self.check()?;
        self.wrk(url, load, WARMUP)?;
        let (cpu0, machine0) = (cpu_ticks(pids)?, CpuTimes::read()?);
        let w = self.wrk(url, load, WINDOW)?;
        let (cpu1, machine1) = (cpu_ticks(pids)?, CpuTimes::read()?);
        let num = |k: &str| w[k].as_f64().unwrap_or(f64::NAN);
        let requests = w["requests"].as_u64().unwrap_or(0);
        if requests == 0 {
            bail!("wrk completed no request against {url}: {w}");
        }
        let secs = num("duration_us") / 1e6;
        let cpu_s = cpu1.saturating_sub(cpu0) as f64 / machine0.ticks_per_s;
        let busy = machine1.busy.saturating_sub(machine0.busy) as f64;
        let all = machine1.total.saturating_sub(machine0.total) as f64;
        Ok(json!({
            "connections": load.connections(),
            "requests": requests,
            "window_s": secs,
            "requests_per_s": requests as f64 / secs,
            "mean_ms": num("mean_us") / 1e3,
            "p50_ms": num("p50_us") / 1e3,
            "p90_ms": num("p90_us") / 1e3,
            "p99_ms": num("p99_us") / 1e3,
            "max_ms": num("max_us") / 1e3,
            "errors": {
                "connect": w["connect_errors"],
                "read": w["read_errors"],
                "write": w["write_errors"],
                "timeout": w["timeouts"],
                "non_2xx_3xx": w["non_2xx_3xx"],
            },
            "cpu_s": cpu_s,
            "cores_busy": cpu_s / secs,
            "requests_per_cpu_s": if cpu_s > 0.0 { requests as f64 / cpu_s } else { f64::NAN },
            "machine_cpu_busy": if all > 0.0 { busy / all } else { f64::NAN },
        }))
    }

    fn wrk(&self, url: &str, load: Load, duration: Duration) -> Result<Value> {
        let connections = load.connections();
        let mut wrk = self.in_client("wrk");
        wrk.arg("-t")
            .arg(WRK_THREADS.min(connections).to_string())
            .arg("-c")
            .arg(connections.to_string())
            .arg("-d")
            .arg(format!("{}s", duration.as_secs()))
            .arg("--latency")
            .arg("-s")
            .arg(self.dir.join("wrk.lua"));
        if load == Load::NewConnection {
            wrk.args(["-H", "Connection: close"]);
        }
        wrk.arg(url);
        let out = cmd::output(&mut wrk)?;
        let line = out
            .lines()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("no JSON line in wrk's output:\n{out}"))?;
        serde_json::from_str(line).with_context(|| format!("parsing wrk's line {line:?}"))
    }

    /// RSS of `pids` before and after IDLE connections to VIP:`port` are opened.
    fn idle_memory(&self, pids: &[u32], port: u16, tls: bool) -> Result<Value> {
        self.check()?;
        let before = rss_kib(pids)?;
        let (idle, opened) = self.open_idle(port, tls)?;
        thread::sleep(SETTLE);
        let after = rss_kib(pids)?;
        drop(idle);
        let delta = after.saturating_sub(before);
        Ok(json!({
            "connections": IDLE,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_delta_kib": delta,
            "bytes_per_connection": (delta * 1024) as f64 / IDLE as f64,
            "open_s": opened["seconds"],
        }))
    }

    /// The Python client holding IDLE connections to VIP:`port` open until dropped.
    fn open_idle(&self, port: u16, tls: bool) -> Result<(Idle, Value)> {
        self.check()?;
        let mut client = self.in_client("python3");
        client
            .arg("-c")
            .arg(CLIENT)
            .args(["idle", &self.vip().to_string(), &port.to_string()])
            .args([IDLE.to_string(), IDLE_OPENERS.to_string()])
            .arg(if tls { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = client
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&client)))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the idle client's stdout")?;
        let idle = Idle { child, stdin };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the idle client's report")?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("the idle client said {line:?}"))?;
        if v["open"].as_u64() != Some(IDLE as u64) {
            bail!(
                "only {} of {IDLE} idle connections to port {port} opened: {}",
                v["open"],
                v["first_error"]
            );
        }
        Ok((idle, v))
    }

    /// Full TLS handshakes per second, with the proxy's CPU over the window.
    fn handshakes(&self, pids: &[u32]) -> Result<Value> {
        self.check()?;
        let run = |window: Duration| {
            self.client(&[
                "handshakes",
                &self.vip().to_string(),
                &HTTPS_PORT.to_string(),
                &window.as_secs().to_string(),
                &HANDSHAKE_THREADS.to_string(),
            ])
        };
        run(WARMUP)?;
        let (cpu0, ticks) = (cpu_ticks(pids)?, CpuTimes::read()?.ticks_per_s);
        let v = run(WINDOW)?;
        let cpu_s = cpu_ticks(pids)?.saturating_sub(cpu0) as f64 / ticks;
        let full = v["handshakes"].as_u64().unwrap_or(0);
        if v["resumed"].as_u64() != Some(0) {
            bail!("the handshake generator resumed sessions; it must only do full handshakes: {v}");
        }
        if full == 0 {
            bail!("no TLS handshake completed: {v}");
        }
        let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
        Ok(json!({
            "full_handshakes": full,
            "resumed": v["resumed"],
            "errors": v["errors"],
            "first_error": v["first_error"],
            "negotiated": v["negotiated"],
            "window_s": secs,
            "handshakes_per_s": full as f64 / secs,
            "cpu_s": cpu_s,
            "handshakes_per_cpu_s": if cpu_s > 0.0 { full as f64 / cpu_s } else { f64::NAN },
        }))
    }

    /// Runs the Python client to completion; its last line is JSON.
    fn client(&self, args: &[&str]) -> Result<Value> {
        let out = cmd::output(self.in_client("python3").arg("-c").arg(CLIENT).args(args))?;
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("the Python client said {out:?}"))
    }

    fn backend_nginx_conf(&self) -> String {
        let body = "b".repeat(BODY_BYTES);
        format!(
            "worker_processes 1;\nworker_rlimit_nofile {nofile};\ndaemon off;\npid {dir}/backend.pid;\n\
             error_log {dir}/backend-error.log error;\n\
             events {{ worker_connections {nofile}; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n\
               default_type text/plain;\n\
               server {{\n    listen {addr} backlog=4096;\n    location / {{ return 200 \"{body}\"; }}\n  }}\n}}\n",
            dir = self.dir.display(),
            addr = self.backend(),
            nofile = self.nofile,
        )
    }

    fn proxy_nginx_conf(&self) -> String {
        let workers = workers();
        format!(
            "worker_processes {workers};\nworker_rlimit_nofile {nofile};\ndaemon off;\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log error;\n\
             events {{ worker_connections {nofile}; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout 60s;\n  keepalive_requests 100;\n\
               upstream backend {{ server {backend}; keepalive 64; }}\n\
               server {{\n    listen {vip}:{HTTP_PORT} backlog=4096;\n    listen {vip}:{HTTPS_PORT} ssl backlog=4096;\n\
                 ssl_certificate {dir}/cert.pem;\n    ssl_certificate_key {dir}/key.pem;\n\
                 ssl_protocols TLSv1.2;\n    ssl_ciphers {POLICY_1_2_CIPHERS};\n    ssl_prefer_server_ciphers on;\n\
                 location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n",
            dir = self.dir.display(),
            backend = self.backend(),
            vip = self.vip(),
            nofile = self.nofile,
        )
    }

    fn haproxy_cfg(&self) -> String {
        let workers = workers();
        format!(
            "global\n  nbthread {workers}\n  maxconn {maxconn}\n  no strict-limits\n\
               ssl-default-bind-ciphers {POLICY_1_2_CIPHERS}\n\
               ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2\n\n\
             defaults\n  mode http\n  maxconn {maxconn}\n  option http-keep-alive\n  option forwardfor\n\
               http-reuse safe\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
               timeout http-keep-alive 60s\n  timeout http-request 60s\n\n\
             frontend bench\n  bind {vip}:{HTTP_PORT}\n  bind {vip}:{HTTPS_PORT} ssl crt {dir}/haproxy.pem\n\
               default_backend backend\n\n\
             backend backend\n  server b1 {backend}\n",
            dir = self.dir.display(),
            backend = self.backend(),
            vip = self.vip(),
            // Left to itself HAProxy derives maxconn from the descriptor limit, about half of
            // it (it reserves a backend descriptor per connection), which may be under IDLE;
            // `no strict-limits` lets it start when the hard limit is below twice this.
            maxconn = IDLE + 100,
        )
    }

    fn slb_toml(&self) -> String {
        let ifaces: Vec<String> = self
            .lab
            .lb_ifaces()
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect();
        let listener = |protocol: &str, port: u16, extra: &str| {
            format!(
                "\n[[LoadBalancers.Listeners]]\nListenerProtocol = \"{protocol}\"\nListenerPort = {port}\n\
                 BackendServerPort = {BACKEND_PORT}\nScheduler = \"wrr\"\nStickySession = \"off\"\n\
                 HealthCheck = \"off\"\nIdleTimeout = 60\nRequestTimeout = 60\n{extra}"
            )
        };
        format!(
            "[Agent]\nInterfaces = [{}]\nPinPath = \"{}\"\nFlowTableSize = 65536\n\n\
             [[ServerCertificates]]\nServerCertificateId = \"cert-bench\"\n\
             ServerCertificate = \"cert.pem\"\nPrivateKey = \"key.pem\"\n\n\
             [[LoadBalancers]]\nLoadBalancerId = \"lb-bench-l7\"\nAddress = \"{}\"\n\
             BackendServers = [{{ ServerId = \"{}\", Weight = 100 }}]\n{}{}",
            ifaces.join(", "),
            self.site.pins,
            self.vip(),
            self.backend().ip(),
            listener("http", HTTP_PORT, ""),
            listener(
                "https",
                HTTPS_PORT,
                "ServerCertificateId = \"cert-bench\"\nTLSCipherPolicy = \"tls_cipher_policy_1_2\"\n\
                 EnableHttp2 = \"off\"\n"
            ),
        )
    }
}

/// `-p DIR -e DIR/<name>-error.log -c DIR/<name>.conf`: nothing from Debian's own configuration.
fn nginx_args(dir: &Path, name: &str) -> Vec<String> {
    let d = dir.display();
    vec![
        "-p".into(),
        format!("{d}/"),
        "-e".into(),
        format!("{d}/{name}-error.log"),
        "-c".into(),
        format!("{d}/{name}.conf"),
    ]
}

/// `latency added`: the proxied percentiles minus those straight to the backend.
fn add_latency_added(run: &mut Value, direct: &Value) {
    for p in ["p50", "p99"] {
        let key = format!("{p}_ms");
        let added =
            run[&key].as_f64().unwrap_or(f64::NAN) - direct[&key].as_f64().unwrap_or(f64::NAN);
        run[format!("added_{p}_ms")] = json!(added);
    }
}

/// The keys whose per-round values a merged record keeps under `rounds`, where it has them.
const SPREAD: [&str; 5] = [
    "requests_per_s",
    "requests_per_cpu_s",
    "handshakes_per_s",
    "handshakes_per_cpu_s",
    "p99_ms",
];

/// One case's records of every round (the same shape each) as one record: every number the
/// median over the rounds; error counts (`errors`, and every nested object, such as wrk's
/// errors by kind) summed, so that an error in any round shows; texts from the first round that
/// has one. `rounds` keeps the per-round values of [`SPREAD`] for the spread.
fn merge_rounds(records: &[&Value]) -> Value {
    let Some(first) = records.first().and_then(|r| r.as_object()) else {
        return Value::Null;
    };
    let sum = |vs: Vec<&Value>| json!(vs.iter().filter_map(|v| v.as_u64()).sum::<u64>());
    let mut out = Map::new();
    for key in first.keys() {
        let all: Vec<&Value> = records.iter().map(|r| &r[key]).collect();
        // A NaN was written as null, so the first round may have none where the others do.
        let merged = match all.iter().find(|v| !v.is_null()) {
            Some(Value::Object(kinds)) => kinds
                .keys()
                .map(|k| (k.clone(), sum(all.iter().map(|v| &v[k]).collect())))
                .collect(),
            Some(Value::Number(_)) if key == "errors" => sum(all),
            Some(Value::Number(_)) => {
                let m = median(all.iter().filter_map(|v| v.as_f64()).collect());
                // Counts stay integers: the median of an odd number of them is one of them.
                if all.iter().all(|v| v.is_u64()) && m.fract() == 0.0 {
                    json!(m as u64)
                } else {
                    json!(m)
                }
            }
            other => other.copied().cloned().unwrap_or_default(),
        };
        out.insert(key.clone(), merged);
    }
    let spread: Map<String, Value> = SPREAD
        .iter()
        .filter(|k| first.contains_key(**k))
        .map(|k| {
            (
                k.to_string(),
                records.iter().map(|r| r[*k].clone()).collect(),
            )
        })
        .collect();
    out.insert("rounds".into(), Value::Object(spread));
    Value::Object(out)
}

/// The middle value, or the mean of the two middle ones; NaN for none.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// What the ratios and the table compare: (JSON path in a proxy's results, table label, digits).
const COMPARED: &[(&[&str], &str, usize)] = &[
    (
        &["http", "keepalive", "requests_per_s"],
        "HTTP keep-alive req/s",
        0,
    ),
    (
        &["http", "keepalive", "requests_per_cpu_s"],
        "HTTP keep-alive req per proxy CPU-second",
        0,
    ),
    (
        &["http", "keepalive", "p50_ms"],
        "HTTP keep-alive p50 ms",
        2,
    ),
    (
        &["http", "keepalive", "p99_ms"],
        "HTTP keep-alive p99 ms",
        2,
    ),
    (
        &["http", "keepalive", "added_p99_ms"],
        "HTTP keep-alive p99 added ms",
        2,
    ),
    (
        &["http", "new_connection", "requests_per_s"],
        "HTTP new connection req/s",
        0,
    ),
    (
        &["http", "new_connection", "requests_per_cpu_s"],
        "HTTP new connection req per proxy CPU-second",
        0,
    ),
    (
        &["http", "new_connection", "p50_ms"],
        "HTTP new connection p50 ms",
        2,
    ),
    (
        &["http", "new_connection", "p99_ms"],
        "HTTP new connection p99 ms",
        2,
    ),
    (
        &["http", "new_connection", "added_p99_ms"],
        "HTTP new connection p99 added ms",
        2,
    ),
    (
        &["http", "one_connection", "added_p50_ms"],
        "HTTP 1 connection p50 added ms",
        3,
    ),
    (
        &["http", "one_connection", "added_p99_ms"],
        "HTTP 1 connection p99 added ms",
        3,
    ),
    (
        &["idle_memory", "http", "bytes_per_connection"],
        "HTTP idle connection, bytes of RSS",
        0,
    ),
    (
        &["https", "keepalive", "requests_per_s"],
        "HTTPS keep-alive req/s",
        0,
    ),
    (
        &["https", "keepalive", "requests_per_cpu_s"],
        "HTTPS keep-alive req per proxy CPU-second",
        0,
    ),
    (
        &["https", "keepalive", "p50_ms"],
        "HTTPS keep-alive p50 ms",
        2,
    ),
    (
        &["https", "keepalive", "p99_ms"],
        "HTTPS keep-alive p99 ms",
        2,
    ),
    (
        &["https", "keepalive", "added_p99_ms"],
        "HTTPS keep-alive p99 added ms",
        2,
    ),
    (
        &["https", "new_connection", "requests_per_s"],
        "HTTPS new connection req/s",
        0,
    ),
    (
        &["https", "new_connection", "requests_per_cpu_s"],
        "HTTPS new connection req per proxy CPU-second",
        0,
    ),
    (
        &["https", "new_connection", "p50_ms"],
        "HTTPS new connection p50 ms",
        2,
    ),
    (
        &["https", "new_connection", "p99_ms"],
        "HTTPS new connection p99 ms",
        2,
    ),
    (
        &["https", "new_connection", "added_p99_ms"],
        "HTTPS new connection p99 added ms",
        2,
    ),
    (
        &["https", "one_connection", "added_p50_ms"],
        "HTTPS 1 connection p50 added ms",
        3,
    ),
    (
        &["https", "one_connection", "added_p99_ms"],
        "HTTPS 1 connection p99 added ms",
        3,
    ),
    (
        &["idle_memory", "https", "bytes_per_connection"],
        "HTTPS idle connection, bytes of RSS",
        0,
    ),
    (
        &["tls_handshakes", "handshakes_per_s"],
        "full TLS handshakes/s",
        0,
    ),
    (
        &["tls_handshakes", "handshakes_per_cpu_s"],
        "full TLS handshakes per proxy CPU-second",
        0,
    ),
];

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// The place at `path`, made (as null) where it is missing.
fn at_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| &mut v[*k])
}

fn ratio(a: &Value, b: &Value, path: &[&str]) -> Value {
    match (at(a, path).as_f64(), at(b, path).as_f64()) {
        // A latency added below zero is noise (the backend alone had the worse tail in its
        // window); a ratio of it means nothing.
        (Some(x), Some(y)) if x > 0.0 && y > 0.0 => json!(x / y),
        _ => Value::Null,
    }
}

/// `a` over `b` for every compared figure: the median of the per-round ratios, each between
/// runs of one round, back to back, so that what drifts from round to round (the machine's
/// neighbours, its caches) falls out; for what is measured once, the ratio of the two results.
fn ratios(rounds: &[Value], results: &Value, a: Proxy, b: Proxy) -> Value {
    let mut out = Map::new();
    for (path, _, _) in COMPARED {
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|r| ratio(&r[a.key()], &r[b.key()], path).as_f64())
            .collect();
        let r = if per_round.is_empty() {
            ratio(&results[a.key()], &results[b.key()], path)
        } else {
            json!(median(per_round))
        };
        out.insert(path.join("."), r);
    }
    Value::Object(out)
}

/// The target, case by case: slb's requests per CPU-second at least nginx's and its p99
/// no worse, from the ratios of [`ratios`].
fn target_verdicts(slb_over_nginx: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for proto in ["http", "https"] {
        for load in [Load::KeepAlive, Load::NewConnection] {
            let key = |figure: &str| format!("{proto}.{}.{figure}", load.key());
            let per_core = slb_over_nginx[key("requests_per_cpu_s")].clone();
            let p99 = slb_over_nginx[key("p99_ms")].clone();
            let met = matches!((per_core.as_f64(), p99.as_f64()), (Some(t), Some(l)) if t >= 1.0 && l <= 1.0);
            out.insert(
                format!("{proto}.{}", load.key()),
                json!({ "per_core_throughput_ratio": per_core, "p99_ratio": p99, "met": met }),
            );
        }
    }
    out
}

/// The summary table printed at the end (the README's bench l7 section is written from it).
fn markdown(r: &Value) -> String {
    let p = &r["proxies"];
    let (slb, nginx, haproxy) = (&p["slb"], &p["nginx"], &p["haproxy"]);
    let cell = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    };
    // `nginx version: nginx/1.22.1`, `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - ...`.
    let version = |key: &str| {
        r["versions"][key]
            .as_str()
            .and_then(|v| {
                v.split([' ', '/'])
                    .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))
            })
            .unwrap_or("?")
            .to_string()
    };
    let mut s = format!(
        "\n| | slb | nginx {} | HAProxy {} | slb / nginx | slb / HAProxy |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
        version("nginx"),
        version("haproxy"),
    );
    for (path, label, digits) in COMPARED {
        s.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} |\n",
            cell(at(slb, path), *digits),
            cell(at(nginx, path), *digits),
            cell(at(haproxy, path), *digits),
            cell(&r["ratios"]["slb_over_nginx"][path.join(".")], 2),
            cell(&r["ratios"]["slb_over_haproxy"][path.join(".")], 2),
        ));
    }
    let yes_no = |v: &Value| match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    s.push_str(&format!(
        "| resumes a TLS session offered back | {} | {} | {} | | |\n",
        yes_no(&slb["resumes_sessions"]),
        yes_no(&nginx["resumes_sessions"]),
        yes_no(&haproxy["resumes_sessions"]),
    ));
    s.push_str(&format!(
        "\nEach proxy's figure is the median of {} rounds; in each round every proxy runs each \
         case in turn, freshly started, in an order that rotates. A ratio is the median of the \
         per-round ratios. Idle memory and session resumption are measured once.\n",
        r["rounds"]
    ));
    let d = &r["direct"];
    s.push_str(&format!(
        "Straight to the backend: keep-alive {:.0} req/s (p50 {:.2} / p99 {:.2} ms), new connection \
         {:.0} req/s (p50 {:.2} / p99 {:.2} ms), 1 connection p50 {:.3} / p99 {:.3} ms.\n",
        at(d, &["keepalive", "requests_per_s"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["keepalive", "p50_ms"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["keepalive", "p99_ms"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["new_connection", "requests_per_s"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["new_connection", "p50_ms"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["new_connection", "p99_ms"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["one_connection", "p50_ms"]).as_f64().unwrap_or(f64::NAN),
        at(d, &["one_connection", "p99_ms"]).as_f64().unwrap_or(f64::NAN),
    ));
    let mut errors = Vec::new();
    for (name, v) in [("slb", slb), ("nginx", nginx), ("HAProxy", haproxy)] {
        for proto in ["http", "https"] {
            for load in Load::ALL {
                let e = &v[proto][load.key()]["errors"];
                let total: u64 = e
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, n)| n.as_u64())
                    .sum();
                if total > 0 {
                    errors.push(format!("{name} {proto} {}: {e}", load.key()));
                }
            }
        }
    }
    if !errors.is_empty() {
        s.push_str(&format!(
            "wrk errors, summed over the rounds: {}\n",
            errors.join("; ")
        ));
    }
    s.push_str(&format!(
        "Target (per core, at least nginx's throughput and no worse p99): {}\n",
        if r["meets_target"] == true {
            "met"
        } else {
            "**missed**"
        }
    ));
    s
}

/// The proxy under test: the agent, or nginx / HAProxy.
enum Running {
    Slb {
        agent: Agent,
        slb: PathBuf,
        ns: String,
        vip: IpAddr,
        pins: &'static str,
    },
    Daemon(Daemon),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Slb { agent, .. } => agent.child.id(),
            Running::Daemon(d) => d.pid(),
        }
    }

    fn alive(&mut self) -> Result<()> {
        match self {
            Running::Slb { agent, .. } => match agent.child.try_wait()? {
                Some(status) => {
                    let said: Vec<String> = agent.lines.try_iter().collect();
                    bail!("the agent exited ({status}):\n{}", said.join("\n"))
                }
                None => Ok(()),
            },
            Running::Daemon(d) => d.alive(),
        }
    }

    /// Stops it and, for the agent, detaches its XDP program, removes its pins and gives the
    /// VIP its local route back; safe to call again.
    fn stop(&mut self) -> Result<()> {
        match self {
            Running::Slb {
                agent,
                slb,
                ns,
                vip,
                pins,
            } => {
                let stopped = agent.stop();
                let unloaded = unload(slb, ns, Path::new(pins));
                // The agent made the VIP local with `ip route replace local VIP dev lo`, which
                // lands in the local table and so replaced the route of the lab's address on
                // `lo`; on exit it deleted it. Without it nginx and HAProxy cannot bind the VIP.
                let restored = cmd::run(Command::new("ip").args([
                    "-n",
                    ns,
                    "route",
                    "replace",
                    "local",
                    &vip.to_string(),
                    "dev",
                    "lo",
                    "table",
                    "local",
                ]));
                stopped
                    .and(unloaded)
                    .and(restored)
                    .and(OwnedDir((*pins).into()).remove())
            }
            Running::Daemon(d) => d.stop(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // On the way out of an error: the error being reported matters more.
        let _ = self.stop();
    }
}

/// nginx or HAProxy in a namespace, in a process group of its own (Ctrl-C does not reach it;
/// it is stopped in order), its output in a log file. Stopped when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(ns: &str, program: &str, args: &[String], log: PathBuf) -> Result<Daemon> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = lab::netns_command(ns, program);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = c
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&c)))?;
        Ok(Daemon { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited ({status}):\n{log}", self.log.display());
        }
        Ok(())
    }

    /// SIGTERM to the group, SIGKILL after [`STOP_TIMEOUT`]; returns once no process of the
    /// group is left (a worker still holding the listening socket would keep the next proxy
    /// from binding).
    fn stop(&mut self) -> Result<()> {
        let group = Pid::from_raw(i32::try_from(self.child.id()).context("pid")?);
        let gone = || killpg(group, None) == Err(Errno::ESRCH);
        if gone() {
            let _ = self.child.try_wait();
            return Ok(());
        }
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            // Reaps the leader, so that the group can disappear.
            let _ = self.child.try_wait();
            if gone() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        bail!(
            "{} ignored SIGTERM for {STOP_TIMEOUT:?} and was killed",
            self.log.display()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The Python client holding idle connections; closing its stdin makes it close them and exit.
struct Idle {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Idle {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// `root` and its descendants (nginx's master and workers).
fn process_tree(root: u32) -> Result<Vec<u32>> {
    let mut parent = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes may end while we look; they are not ours.
        if let Ok(fields) = stat_fields(pid) {
            if let Some(ppid) = fields.get(1).and_then(|p| p.parse::<u32>().ok()) {
                parent.insert(pid, ppid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    Ok(tree)
}

/// /proc/<pid>/stat after the command name: field 3 (state) first.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    Ok(rest.split_whitespace().map(String::from).collect())
}

/// utime + stime of `pids`, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let f = stat_fields(*pid)?;
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
        for i in [11, 12] {
            total += f
                .get(i)
                .and_then(|t| t.parse::<u64>().ok())
                .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))?;
        }
    }
    Ok(total)
}

/// VmRSS of `pids`, summed, in KiB.
fn rss_kib(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("/proc/{pid}/status has no VmRSS"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn merge_takes_medians_sums_errors_and_keeps_the_rounds() {
        let round = |rps: f64, per_cpu: f64, p99: f64, requests: u64, timeouts: u64| {
            json!({
                "connections": 64,
                "requests": requests,
                "requests_per_s": rps,
                "requests_per_cpu_s": per_cpu,
                "p99_ms": p99,
                "errors": { "connect": 0, "timeout": timeouts },
                "note": "wrk",
            })
        };
        let rounds = [
            round(100.0, 80.0, 3.0, 500, 0),
            round(120.0, 114.0, 1.0, 600, 2),
            round(110.0, 96.0, 2.0, 550, 1),
        ];
        let m = merge_rounds(&rounds.iter().collect::<Vec<_>>());
        assert_eq!(m["connections"], json!(64));
        assert_eq!(m["requests"], json!(550));
        assert_eq!(m["requests_per_s"], json!(110.0));
        assert_eq!(m["requests_per_cpu_s"], json!(96.0));
        assert_eq!(m["p99_ms"], json!(2.0));
        assert_eq!(m["errors"], json!({ "connect": 0, "timeout": 3 }));
        assert_eq!(m["note"], json!("wrk"));
        assert_eq!(
            m["rounds"],
            json!({
                "requests_per_s": [100.0, 120.0, 110.0],
                "requests_per_cpu_s": [80.0, 114.0, 96.0],
                "p99_ms": [3.0, 1.0, 2.0],
            })
        );
    }

    #[test]
    fn ratios_are_medians_of_the_rounds_ratios() {
        let proxy =
            |per_cpu: f64| json!({ "http": { "keepalive": { "requests_per_cpu_s": per_cpu } } });
        let round = |slb: f64, nginx: f64| json!({ "slb": proxy(slb), "nginx": proxy(nginx) });
        // Medians apart would give 100 / 100; paired, slb leads in two rounds of three.
        let rounds = [round(90.0, 60.0), round(100.0, 120.0), round(120.0, 100.0)];
        let results = json!({
            "slb": { "idle_memory": { "http": { "bytes_per_connection": 600.0 } } },
            "nginx": { "idle_memory": { "http": { "bytes_per_connection": 800.0 } } },
        });
        let r = ratios(&rounds, &results, Proxy::Slb, Proxy::Nginx);
        assert_eq!(r["http.keepalive.requests_per_cpu_s"], json!(1.2));
        assert_eq!(r["idle_memory.http.bytes_per_connection"], json!(0.75));
        assert_eq!(r["http.keepalive.p99_ms"], Value::Null);
    }

    #[test]
    fn merge_of_handshakes_sums_the_error_count_and_skips_nan() {
        let round = |per_cpu: Value, errors: u64, first_error: Value| {
            json!({
                "handshakes_per_s": 900.0,
                "handshakes_per_cpu_s": per_cpu,
                "errors": errors,
                "first_error": first_error,
            })
        };
        let rounds = [
            // A NaN throughput is written as null.
            round(Value::Null, 0, Value::Null),
            round(json!(1000.0), 1, json!("reset")),
            round(json!(1200.0), 0, Value::Null),
        ];
        let m = merge_rounds(&rounds.iter().collect::<Vec<_>>());
        assert_eq!(m["handshakes_per_cpu_s"], json!(1100.0));
        assert_eq!(m["errors"], json!(1));
        assert_eq!(m["first_error"], json!("reset"));
        assert_eq!(
            m["rounds"]["handshakes_per_cpu_s"],
            json!([null, 1000.0, 1200.0])
        );
        assert_eq!(
            m["rounds"]["handshakes_per_s"],
            json!([900.0, 900.0, 900.0])
        );
    }
}
