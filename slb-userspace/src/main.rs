//! `slb`: the agent and its operator commands.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use slb::{
    agent::Agent,
    api, config,
    dataplane::{image::Image, loader, maps::Maps, sync::SyncReport, DataplaneError},
    health, proxy,
    replay::{self, Harness, Ingress},
    simulate, stats,
};

#[derive(Parser)]
#[command(
    name = "slb",
    version,
    about = "Alibaba SLB-compatible load balancer with an XDP data plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

/// Where the management API of a running agent is and how to sign calls to it.
#[derive(clap::Args)]
struct ApiArgs {
    /// API endpoint (the `[Api] Listen` address).
    #[arg(long, default_value = "127.0.0.1:8600")]
    endpoint: SocketAddr,
    /// Access key file; its first key signs the calls.
    #[arg(long, default_value = "/etc/slb/access-keys.toml")]
    keys_file: PathBuf,
    /// Call over TLS, trusting the CA (or self-signed) certificates in this PEM file.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

impl ApiArgs {
    /// Calls `action` (a POST form, so large parameters fit): HTTP status and JSON body.
    fn send(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let keys = api::sign::AccessKeys::load(&self.keys_file)?;
        let (key_id, secret) = keys
            .first()
            .map(|(i, s)| (i.to_string(), s.to_string()))
            .with_context(|| format!("{} holds no access key", self.keys_file.display()))?;
        let tls = self
            .tls_ca
            .as_deref()
            .map(api::client::tls_connector)
            .transpose()?;
        let client = api::client::Client {
            addr: self.endpoint,
            key_id,
            secret,
            tls,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(client.call_form(action, params))
            .with_context(|| format!("is an agent serving the API on {}?", self.endpoint))
    }

    /// As [`ApiArgs::send`]; an error response is an error.
    fn call(&self, action: &str, params: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.send(action, params)?;
        if status >= 400 {
            bail!(
                "{action}: {} {}",
                body["Code"].as_str().unwrap_or("error"),
                body["Message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the XDP program, program the configuration, and keep it in sync (SIGHUP reloads).
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Attach here instead of the configuration's `Agent.Interfaces` (repeatable).
        #[arg(long)]
        iface: Vec<String>,
        #[arg(long, value_enum)]
        xdp_mode: Option<Mode>,
    },
    /// Validate a configuration and print what would be programmed.
    CheckConfig { file: PathBuf },
    /// Which backend a new flow gets, from the tables the kernel uses.
    Simulate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum)]
        proto: Proto,
        #[arg(long)]
        src: SocketAddr,
        #[arg(long)]
        dst: SocketAddr,
        /// UDP payload (hex), for `qch`.
        #[arg(long)]
        payload_hex: Option<String>,
    },
    /// Counters of a running agent.
    Stats {
        #[arg(long, default_value = "/sys/fs/bpf/slb")]
        pin_path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run each packet of a pcap once through the program programmed from a configuration.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        pcap_in: PathBuf,
        #[arg(long)]
        pcap_out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Time the XDP program per packet through BPF_PROG_TEST_RUN, and Maglev table builds
    /// (`cargo xtask bench l4` runs it; see the README's Benchmarks section).
    #[command(hide = true)]
    BenchXdp {
        #[arg(long)]
        json: bool,
    },
    /// The management API under load: req/s and latency per action and concurrency, time
    /// to live in the maps, store size (`cargo xtask bench api` runs it).
    #[command(hide = true)]
    BenchApi {
        #[arg(long)]
        json: bool,
    },
    /// The health-check engine with 10,000 backends every 2 s next to HAProxy: CPU and the
    /// spread of check times (`cargo xtask bench health` runs it).
    #[command(hide = true)]
    BenchHealth {
        #[arg(long)]
        json: bool,
    },
    /// Call the management API of a running agent, signed with a key from a key file, and
    /// print the JSON response: `slb call DescribeLoadBalancers --RegionId local`.
    Call {
        action: String,
        #[command(flatten)]
        api: ApiArgs,
        /// The action's parameters as `--Name value` pairs, after the options above.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        params: Vec<String>,
    },
    /// Health of every checked member of a running agent's instances (DescribeHealthStatus):
    /// normal, abnormal or unavailable (no check runs for it).
    Health {
        /// Only this instance.
        #[arg(long)]
        load_balancer_id: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a running agent's resources as a configuration file that `slb apply` accepts.
    Export {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a running agent's resources those of FILE, validated exactly like API calls, in
    /// one transaction; prints the changes. `--dry-run` prints them and changes nothing.
    Apply {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Detach the program and remove every pinned map and link of an agent.
    Unload {
        #[arg(long, default_value = "/sys/fs/bpf/slb")]
        pin_path: PathBuf,
    },
}

/// The proxy allocates a few small objects per request (headers, bodies, futures) across
/// threads; mimalloc's per-thread free lists serve those faster than glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if !slb::proxy::tls::allocate_with_mimalloc() {
        log::warn!("OpenSSL had allocated memory before start-up; it keeps glibc's malloc");
    }
    let cli = Cli::parse();
    let long_running = matches!(
        cli.cmd,
        Cmd::Serve { .. } | Cmd::BenchXdp { .. } | Cmd::BenchApi { .. } | Cmd::BenchHealth { .. }
    );
    if !long_running {
        // An operator command piped into `head` ends quietly, as Unix tools do, instead of
        // panicking on the closed stdout. The agent and the benchmarks keep Rust's default
        // (SIGPIPE ignored): a peer closing one of their many sockets must not kill them.
        // SAFETY: restoring the default disposition of one signal, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.cmd {
        Cmd::Serve {
            config,
            iface,
            xdp_mode,
        } => serve(&config, iface, xdp_mode),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Simulate {
            config,
            proto,
            src,
            dst,
            payload_hex,
        } => simulate_cmd(&config, proto, src, dst, payload_hex.as_deref()),
        Cmd::Stats { pin_path, json } => {
            let maps = Maps::from_pins(&pin_path).with_context(|| {
                format!("is an agent running with PinPath {}?", pin_path.display())
            })?;
            let s = stats::collect(&maps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", stats::render(&s));
            }
            Ok(())
        }
        Cmd::Replay {
            config,
            pcap_in,
            pcap_out,
            json,
        } => replay_cmd(&config, &pcap_in, &pcap_out, json),
        Cmd::BenchXdp { json } => print_report(&slb::bench::run()?, json, slb::bench::render),
        Cmd::BenchApi { json } => {
            print_report(&slb::bench_api::run()?, json, slb::bench_api::render)
        }
        Cmd::BenchHealth { json } => {
            print_report(&slb::bench_health::run()?, json, slb::bench_health::render)
        }
        Cmd::Call {
            action,
            api,
            params,
        } => call_cmd(&action, &api, &params),
        Cmd::Health {
            load_balancer_id,
            api,
        } => health_cmd(load_balancer_id, &api),
        Cmd::Export { api } => {
            let body = api.call("ExportConfiguration", &[])?;
            print!("{}", body["Configuration"].as_str().unwrap_or(""));
            Ok(())
        }
        Cmd::Apply { file, dry_run, api } => apply_cmd(&file, dry_run, &api),
        Cmd::Unload { pin_path } => Ok(loader::unload(&pin_path)?),
    }
}

/// A benchmark's report as JSON or as its rendered tables.
fn print_report<R: serde::Serialize>(
    report: &R,
    json: bool,
    render: fn(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

fn load_config(
    path: &Path,
    ifaces: Vec<String>,
    mode: Option<Mode>,
) -> anyhow::Result<config::Config> {
    let mut cfg = config::load(path)?;
    if !ifaces.is_empty() {
        cfg.agent.interfaces = ifaces;
    }
    if let Some(m) = mode {
        cfg.agent.xdp_mode = match m {
            Mode::Native => config::XdpMode::Native,
            Mode::Generic => config::XdpMode::Generic,
        };
    }
    Ok(cfg)
}

fn call_cmd(action: &str, api: &ApiArgs, params: &[String]) -> anyhow::Result<()> {
    let mut pairs = Vec::new();
    let mut it = params.iter();
    while let Some(name) = it.next() {
        let Some(name) = name.strip_prefix("--") else {
            bail!("expected --Name value, found {name:?}");
        };
        let value = it
            .next()
            .with_context(|| format!("--{name} has no value"))?;
        pairs.push((name.to_string(), value.clone()));
    }
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, body) = api.send(action, &refs)?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    if status >= 400 {
        std::process::exit(1);
    }
    Ok(())
}

fn health_cmd(load_balancer_id: Option<String>, api: &ApiArgs) -> anyhow::Result<()> {
    let ids = match load_balancer_id {
        Some(id) => vec![id],
        None => {
            let body = api.call("DescribeLoadBalancers", &[("PageSize", "100")])?;
            let total = body["TotalCount"].as_u64().unwrap_or(0);
            let mut ids = Vec::new();
            for page in 1..=total.div_ceil(100).max(1) {
                let page = page.to_string();
                let body = api.call(
                    "DescribeLoadBalancers",
                    &[("PageSize", "100"), ("PageNumber", &page)],
                )?;
                for lb in body["LoadBalancers"]["LoadBalancer"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    ids.extend(lb["LoadBalancerId"].as_str().map(String::from));
                }
            }
            ids
        }
    };
    println!("LoadBalancerId\tListener\tServerId\tBackend\tStatus");
    for id in ids {
        let body = api.call("DescribeHealthStatus", &[("LoadBalancerId", &id)])?;
        for b in body["BackendServers"]["BackendServer"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let ip = b["ServerIp"].as_str().unwrap_or("");
            let backend = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(_)) => format!("[{ip}]:{}", b["Port"]),
                _ => format!("{ip}:{}", b["Port"]),
            };
            println!(
                "{id}\t{}/{}\t{}\t{backend}\t{}",
                b["Protocol"].as_str().unwrap_or(""),
                b["ListenerPort"],
                b["ServerId"].as_str().unwrap_or(""),
                b["ServerHealthStatus"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Validates FILE here first (errors name this file's lines), then lets the agent validate
/// and apply it against its state.
fn apply_cmd(file: &Path, dry_run: bool, api: &ApiArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    config::parse(&text, &file.display().to_string())?;
    let dry = if dry_run { "true" } else { "false" };
    let body = api.call(
        "ApplyConfiguration",
        &[("Configuration", &text), ("DryRun", dry)],
    )?;
    let changes = body["Changes"]["Change"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in &changes {
        println!("{}", c.as_str().unwrap_or(""));
    }
    let verb = if dry_run { "would change" } else { "changed" };
    println!("{}: {verb} {} resources", file.display(), changes.len());
    Ok(())
}

/// `slb serve` with an `[Api]` section: the state store is the source of truth (seeded from
/// the file's resources when new), the API changes it, and every committed generation is
/// programmed into the data plane.
fn serve_api(cfg: config::Config, section: config::ApiSection) -> anyhow::Result<()> {
    let keys = api::sign::AccessKeys::load(&section.keys_file)?;
    let tls = section
        .tls
        .as_ref()
        .map(|t| api::http::tls_acceptor(&t.certificate, &t.private_key))
        .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let store = api::store::Store::open(&section.state_path)?;
    let state = api::state::State::open(store, Some(&cfg))?;
    let settings = api::Settings {
        region_id: cfg.agent.region_id.clone(),
        zone_ids: section.zone_ids.clone(),
        vip_pool: section.vip_pool.clone(),
    };
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(0u64);
    let mut services = Services::new()?;
    let (api, mut published) = api::Api::new(
        state,
        settings,
        cfg.agent.clone(),
        applied_rx,
        services.checks.status(),
        services.proxy.metrics(),
    );
    let api = std::sync::Arc::new(api);
    let mut current = published.borrow_and_update().clone();
    let (mut agent, report) = Agent::start(&current.config)?;
    return_startup_memory();
    applied_tx.send_replace(current.generation);
    log::info!("programmed: {report:?}");
    let verifier = std::sync::Arc::new(api::sign::Verifier::new(keys));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        services.apply(&current.config);
        let mut flips = services.checks.status().flips();
        let listener = tokio::net::TcpListener::bind(section.listen)
            .await
            .with_context(|| format!("binding the API to {}", section.listen))?;
        println!(
            "slb ready: API on {scheme}://{} (state {}), interfaces [{}], maps pinned at {}",
            section.listen,
            section.state_path.display(),
            cfg.agent.interfaces.join(", "),
            agent.pin_dir.display()
        );
        std::io::stdout().flush()?;
        let server = tokio::spawn(api::http::serve(api.clone(), verifier, listener, tls));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => if let Err(e) = agent.reap() {
                    log::error!("closing idle flows: {e}");
                },
                changed = published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = published.borrow_and_update().clone();
                    services.apply(&current.config);
                    match services.program(&mut agent, &current.config) {
                        Ok(r) => {
                            log::info!("generation {} programmed: {r:?}", current.generation);
                            applied_tx.send_replace(current.generation);
                        }
                        Err(e) => log::error!("programming generation {} failed: {e}", current.generation),
                    }
                },
                _ = flips.changed() => if let Err(e) = services.program(&mut agent, &current.config) {
                    log::error!("applying health check verdicts: {e}");
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        server.abort();
        log::info!(
            "exiting; the data plane keeps forwarding (`slb unload --pin-path {}` removes it)",
            agent.pin_dir.display()
        );
        anyhow::Ok(())
    })
}

/// Called once both BPF objects are loaded. aya parsed the kernel's BTF for each (some 18 MB,
/// freed at once); the allocator keeps freed pages until their thread allocates enough again,
/// which an idle agent's main thread does not.
fn return_startup_memory() {
    // SAFETY: a plain call into the global allocator.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// What the agent runs beside the data plane: health checks and HTTP listeners.
struct Services {
    checks: health::Engine,
    proxy: proxy::Proxy,
}

impl Services {
    fn new() -> anyhow::Result<Services> {
        let checks = health::Engine::new();
        let proxy = proxy::Proxy::new(checks.status())?;
        Ok(Services { checks, proxy })
    }

    /// Brings the checks and HTTP listeners to `cfg` (inside the runtime). A listener that
    /// cannot be served is logged and tried again with the next configuration.
    fn apply(&mut self, cfg: &config::Config) {
        self.checks.apply(cfg);
        for e in self.proxy.apply(cfg) {
            log::error!("HTTP listener not served: {e}");
        }
    }

    /// Programs `cfg` into the data plane without the backends that fail their checks.
    fn program(
        &self,
        agent: &mut Agent,
        cfg: &config::Config,
    ) -> Result<SyncReport, DataplaneError> {
        agent.program(cfg, self.checks.status().down())
    }
}

fn serve(path: &Path, ifaces: Vec<String>, mode: Option<Mode>) -> anyhow::Result<()> {
    let mut cfg = load_config(path, ifaces.clone(), mode)?;
    if let Some(section) = cfg.agent.api.clone() {
        return serve_api(cfg, section);
    }
    let (mut agent, report) = Agent::start(&cfg)?;
    log::info!("programmed: {report:?}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut services = Services::new()?;
        return_startup_memory();
        services.apply(&cfg);
        println!(
            "slb ready: {} listeners on [{}], maps pinned at {}",
            cfg.load_balancers
                .iter()
                .map(|lb| lb.listeners.len())
                .sum::<usize>(),
            cfg.agent.interfaces.join(", "),
            agent.pin_dir.display()
        );
        std::io::stdout().flush()?;
        let mut flips = services.checks.status().flips();
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => if let Err(e) = agent.reap() {
                    log::error!("closing idle flows: {e}");
                },
                _ = hup.recv() => match load_config(path, ifaces.clone(), mode) {
                    Ok(new) => {
                        cfg = new;
                        services.apply(&cfg);
                        match services.program(&mut agent, &cfg) {
                            Ok(r) => log::info!("reloaded {}: {r:?}", path.display()),
                            Err(e) => log::error!("reload failed, maps may be partly updated: {e}"),
                        }
                    }
                    Err(e) => log::error!("reload rejected, keeping the running configuration: {e:#}"),
                },
                _ = flips.changed() => if let Err(e) = services.program(&mut agent, &cfg) {
                    log::error!("applying health check verdicts: {e}");
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        log::info!(
            "exiting; the data plane keeps forwarding (`slb unload --pin-path {}` removes it)",
            agent.pin_dir.display()
        );
        anyhow::Ok(())
    })
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(path)?;
    let image = Image::build(&cfg, &Default::default());
    println!("{}: valid", path.display());
    for (key, l) in &image.listeners {
        let mut shares: BTreeMap<String, usize> = BTreeMap::new();
        for e in l.table.iter() {
            *shares.entry(e.backend.to_string()).or_default() += 1;
        }
        let shares = shares
            .iter()
            .map(|(b, n)| format!("{b}:{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "listener {} ({}) flags={:#x} scheduler={} table={} [{}] acl={} legacy={} persistence={}s idle={}s",
            l.name,
            stats::listener_label(key),
            l.flags,
            l.scheduler,
            l.table.len(),
            shares,
            l.acl.as_deref().unwrap_or("-"),
            l.legacy_acl.as_deref().unwrap_or("-"),
            l.persistence_timeout,
            l.idle_timeout
        );
    }
    for (name, nets) in &image.acls {
        println!("acl {name}: {} entries", nets.len());
    }
    Ok(())
}

fn simulate_cmd(
    path: &Path,
    proto: Proto,
    src: SocketAddr,
    dst: SocketAddr,
    payload_hex: Option<&str>,
) -> anyhow::Result<()> {
    let cfg = config::load(path)?;
    let image = Image::build(&cfg, &Default::default());
    let proto_num = match proto {
        Proto::Tcp => slb_common::PROTO_TCP,
        Proto::Udp => slb_common::PROTO_UDP,
    };
    let key = slb::dataplane::image::listener_key(dst.ip(), dst.port(), proto_num);
    let Some(l) = image.listeners.get(&key) else {
        bail!("no listener on {dst}/{proto_num}: the packet would be passed to the kernel stack");
    };
    let payload = match payload_hex {
        Some(h) => hex_decode(h)?,
        None => Vec::new(),
    };
    match simulate::start_index(l, src, dst, &payload) {
        Some(start) => match simulate::pick(l, start) {
            Some(e) => println!(
                "{} -> {} (table slot {start} of {})",
                l.name,
                e.backend,
                l.table.len()
            ),
            None => println!("{}: no usable backend, new flows are dropped", l.name),
        },
        None if l.table.is_empty() => {
            println!("{}: no usable backend, new flows are dropped", l.name)
        }
        None => {
            let members: Vec<String> = l.table.iter().map(|e| e.backend.to_string()).collect();
            println!(
                "{}: scheduler {} depends on run-time state; a fresh CPU's first flow -> {}; sequence: {}",
                l.name,
                l.scheduler,
                members[0],
                members.join(" ")
            );
        }
    }
    Ok(())
}

fn hex_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("bad hex at {i}")))
        .collect()
}

fn replay_cmd(
    config_path: &Path,
    pcap_in: &Path,
    pcap_out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    let image = Image::build(&cfg, &Default::default());
    let records = replay::pcap::read(pcap_in)?;
    let mut harness = Harness::new(&image, cfg.agent.flow_table_size)?;
    let mut counts = [0usize; 5];
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let o = harness.run(&r.data, Ingress::Lb)?;
        if let Some(c) = counts.get_mut(o.action as usize) {
            *c += 1;
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"index": i, "verdict": replay::action_name(o.action), "output_len": o.data.len()})
            );
        }
        if o.action == 3 || o.action == 4 {
            out.push(replay::pcap::Record {
                ts_sec: r.ts_sec,
                ts_frac: r.ts_frac,
                data: o.data,
            });
        }
    }
    replay::pcap::write(pcap_out, &out)?;
    println!(
        "replayed {} packets: tx={} redirect={} pass={} drop={} aborted={}",
        records.len(),
        counts[3],
        counts[4],
        counts[2],
        counts[1],
        counts[0]
    );
    Ok(())
}
