//! `slb bench-api`: the management API under load with 1,000 listeners and 10,000 backends
//! stored — requests per second and p50/p99 latency of Describe, Set and Create actions at 1,
//! 16 and 64 concurrent clients over real HTTP on loopback with the real store; the time from
//! an acknowledged `SetBackendServers` to the new weights being written into the BPF maps by
//! the agent's programming loop; the store's size on disk.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    agent::Agent,
    api::{
        client::Client,
        http,
        sign::{AccessKeys, Verifier},
        state::State,
        store::Store,
        Api, Settings,
    },
    config,
};

const INSTANCES: usize = 20;
const LISTENERS_PER_INSTANCE: usize = 50;
const BACKENDS_PER_INSTANCE: usize = 500;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Calls per case; each of the `c` clients makes its share.
/// Calls per case: reads are cheap, so they get enough samples per client for a p99 that is
/// not just the connection set-up of the first calls.
const READ_CALLS: usize = 6400;
const WRITE_CALLS: usize = 640;
const LIVE_SAMPLES: usize = 20;
const PIN_PATH: &str = "/sys/fs/bpf/slb-bench-api";
const DESCRIBE_P99_TARGET_MS: f64 = 5.0;
const LIVE_TARGET_MS: f64 = 100.0;

#[derive(Serialize)]
pub struct Case {
    pub action: &'static str,
    pub concurrency: usize,
    pub calls: usize,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub listeners: usize,
    pub backends: usize,
    pub seed_commit_ms: f64,
    pub initial_programming_ms: f64,
    pub cases: Vec<Case>,
    pub set_to_live_p50_ms: f64,
    pub set_to_live_max_ms: f64,
    pub store_bytes: u64,
    pub describe_p99_target_ms: f64,
    pub live_target_ms: f64,
}

fn config_text() -> String {
    let mut t = format!("[Agent]\nPinPath = \"{PIN_PATH}\"\nFlowTableSize = 4096\n\n");
    for lb in 0..INSTANCES {
        let servers: Vec<String> = (0..BACKENDS_PER_INSTANCE)
            .map(|i| {
                format!(
                    "{{ ServerId = \"10.{}.{}.{}\", Weight = 100 }}",
                    100 + lb,
                    i / 250,
                    1 + i % 250
                )
            })
            .collect();
        t.push_str(&format!(
            "[[LoadBalancers]]\nLoadBalancerId = \"lb-bench-{lb}\"\nAddress = \"10.200.0.{}\"\nBackendServers = [{}]\n",
            lb + 1,
            servers.join(", ")
        ));
        for l in 0..LISTENERS_PER_INSTANCE {
            t.push_str(&format!(
                "[[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = {}\nBackendServerPort = 80\n",
                1000 + l
            ));
        }
    }
    t
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Returns once the data plane has programmed every committed change.
async fn caught_up(api: &Api) -> anyhow::Result<()> {
    let want = api.generation();
    let mut applied = api.applied();
    while *applied.borrow_and_update() < want {
        applied.changed().await?;
    }
    Ok(())
}

/// `c` clients sharing `calls` calls of `make(i)`; every call must succeed. Starts once the
/// programming loop has caught up with the writes of the cases before, so that a case is not
/// timed against their reprogramming.
async fn load(
    api: &Api,
    client: &Client,
    action: &'static str,
    c: usize,
    calls: usize,
    make: Arc<dyn Fn(usize) -> Vec<(String, String)> + Send + Sync>,
) -> anyhow::Result<Case> {
    caught_up(api).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let client = client.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            // Each client keeps its connection, as the SDKs' connection pools do.
            let mut session = client.session();
            let mut lat = Vec::new();
            for i in (w..calls).step_by(c) {
                let params = make(i);
                let refs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let t = Instant::now();
                let (status, body) = session.call(action, &refs).await?;
                if status != 200 {
                    anyhow::bail!("{action}: {status} {body}");
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok(Case {
        action,
        concurrency: c,
        calls: all.len(),
        requests_per_s: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    })
}

/// Runs the benchmark (needs root: the agent loads its XDP program and maps).
pub fn run() -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!("slb-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config::parse(&config_text(), "bench-api.toml").context("benchmark config")?;
    let t = Instant::now();
    let state = State::open(Store::open(&dir.join("state.redb"))?, Some(&cfg))?;
    let seed_commit_ms = t.elapsed().as_secs_f64() * 1000.0;
    let settings = Settings {
        region_id: "local".into(),
        zone_ids: vec!["local-a".into()],
        vip_pool: vec!["10.201.0.0/16".parse().context("pool")?],
    };
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let (api, mut published) = Api::new(
        state,
        settings,
        cfg.agent.clone(),
        applied_rx,
        // No checks run here: every member reads `unavailable`.
        crate::health::Engine::new().status(),
        Default::default(),
    );
    let api = Arc::new(api);
    let first = published.borrow_and_update().clone();
    let t = Instant::now();
    let (mut agent, _) = Agent::start(&first.config)?;
    let initial_programming_ms = t.elapsed().as_secs_f64() * 1000.0;
    applied_tx.send_replace(first.generation);

    // The agent's programming loop, as `slb serve` runs it.
    let programmer = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        while rt.block_on(published.changed()).is_ok() {
            let p = published.borrow_and_update().clone();
            agent
                .reload(&p.config)
                .with_context(|| format!("programming generation {}", p.generation))?;
            applied_tx.send_replace(p.generation);
        }
        Ok(())
    });

    // The API on its own runtime, as `slb serve` runs it; the clients on another, as the
    // SDKs would be other processes.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let verifier = Arc::new(Verifier::new(AccessKeys::from_pairs([(
        "bench".to_string(),
        "bench".to_string(),
    )])));
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let server = server_rt.spawn(http::serve(api.clone(), verifier, listener, None));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(measure(&api, addr));
    server.abort();
    drop(server_rt);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            drop(rt);
            drop(api);
            let programmer = programmer
                .join()
                .map_err(|_| anyhow::anyhow!("programmer panicked"))?;
            programmer?;
            return Err(e);
        }
    };
    drop(rt);
    drop(api);
    let _ = programmer.join();
    let _ = crate::dataplane::loader::unload(std::path::Path::new(PIN_PATH));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        seed_commit_ms,
        initial_programming_ms,
        ..report
    })
}

async fn measure(api: &Arc<Api>, addr: std::net::SocketAddr) -> anyhow::Result<Report> {
    let client = Client {
        addr,
        key_id: "bench".into(),
        secret: "bench".into(),
        tls: None,
    };
    let mut cases = Vec::new();
    for c in CONCURRENCY {
        cases.push(
            load(
                api,
                &client,
                "DescribeLoadBalancerTCPListenerAttribute",
                c,
                READ_CALLS,
                Arc::new(|i| {
                    vec![
                        (
                            "LoadBalancerId".into(),
                            format!("lb-bench-{}", i % INSTANCES),
                        ),
                        (
                            "ListenerPort".into(),
                            (1000 + i % LISTENERS_PER_INSTANCE).to_string(),
                        ),
                    ]
                }),
            )
            .await?,
        );
        cases.push(
            load(
                api,
                &client,
                "SetBackendServers",
                c,
                WRITE_CALLS,
                Arc::new(|i| {
                    let lb = i % INSTANCES;
                    vec![
                        ("LoadBalancerId".into(), format!("lb-bench-{lb}")),
                        (
                            "BackendServers".into(),
                            format!(
                                r#"[{{"ServerId":"10.{}.0.{}","Weight":{}}}]"#,
                                100 + lb,
                                1 + i % 250,
                                1 + i % 100
                            ),
                        ),
                    ]
                }),
            )
            .await?,
        );
        cases.push(
            load(
                api,
                &client,
                "CreateLoadBalancer",
                c,
                WRITE_CALLS,
                Arc::new(|_| vec![("LoadBalancerName".into(), "bench".into())]),
            )
            .await?,
        );
    }
    // Acknowledged weight change → written into the maps by the programming loop.
    let mut live = Vec::new();
    for i in 0..LIVE_SAMPLES {
        let body = format!(r#"[{{"ServerId":"10.100.0.1","Weight":{}}}]"#, 10 + i);
        let (status, resp) = client
            .call(
                "SetBackendServers",
                &[("LoadBalancerId", "lb-bench-0"), ("BackendServers", &body)],
            )
            .await?;
        let acked = Instant::now();
        if status != 200 {
            anyhow::bail!("SetBackendServers: {status} {resp}");
        }
        caught_up(api).await?;
        live.push(acked.elapsed());
    }
    live.sort();
    anyhow::Ok(Report {
        listeners: INSTANCES * LISTENERS_PER_INSTANCE,
        backends: INSTANCES * BACKENDS_PER_INSTANCE,
        seed_commit_ms: 0.0,
        initial_programming_ms: 0.0,
        cases,
        set_to_live_p50_ms: percentile(&live, 0.5),
        set_to_live_max_ms: percentile(&live, 1.0),
        store_bytes: api.store_size(),
        describe_p99_target_ms: DESCRIBE_P99_TARGET_MS,
        live_target_ms: LIVE_TARGET_MS,
    })
}

pub fn render(r: &Report) -> String {
    let mut s = format!(
        "API with {} listeners and {} backends stored (store {} KiB on disk)\n",
        r.listeners,
        r.backends,
        r.store_bytes / 1024
    );
    s.push_str(&format!(
        "{:<42} {:>5} {:>9} {:>9} {:>9}\n",
        "action", "conc", "req/s", "p50 ms", "p99 ms"
    ));
    for c in &r.cases {
        s.push_str(&format!(
            "{:<42} {:>5} {:>9.0} {:>9.2} {:>9.2}\n",
            c.action, c.concurrency, c.requests_per_s, c.p50_ms, c.p99_ms
        ));
    }
    s.push_str(&format!(
        "SetBackendServers acknowledged → live in the BPF maps: p50 {:.1} ms, max {:.1} ms (target ≤ {} ms)\n",
        r.set_to_live_p50_ms, r.set_to_live_max_ms, r.live_target_ms
    ));
    s
}
