//! `cargo xtask bench l4`: the L4 benchmarks, written to `bench/results/l4.json`; `bench api`:
//! the management API, written to `bench/results/api.json`; `bench health`: health checks of
//! 10,000 backends next to HAProxy, written to `bench/results/health.json`.
//!
//! 1. `slb bench-xdp --json`: ns/packet of the XDP program through `BPF_PROG_TEST_RUN` (hit,
//!    new flow per scheduler, IPv6, a 10,000-entry ACL) and Maglev build times.
//! 2. In one namespace lab (`slbbench-*`, 3 backends), the same UDP traffic (from the
//!    live-frames generator in `livegen`) through our XDP path and then through an nftables DNAT
//!    load balancer: packets per second counted at the backends' ingress and the machine's CPU
//!    over the window, and their ratio.
use std::{
    path::Path,
    process::Command,
    sync::mpsc::RecvTimeoutError,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use xtask::{
    cmd,
    lab::{self, Lab},
};

use crate::{
    agent::{unload, Agent},
    floor,
    livegen::{self, Frame, Generator},
    setup, OwnedDir, Workspace,
};

/// Relative to the workspace root.
const RESULTS: &str = "bench/results/l4.json";
const PREFIX: &str = "slbbench";
const N: u8 = 90;
const BACKENDS: usize = 3;
const PORT: u16 = 9000;
const PIN_PATH: &str = "/sys/fs/bpf/slb-bench";
/// One sender per core: the generator shares the machine with the sinks and the forwarding.
const SENDERS: usize = 2;
/// UDP payload bytes.
const PAYLOAD: usize = 64;
/// Traffic before the window: ARP/ND resolution, conntrack and flow entries, caches.
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Targets from the benchmark issue.
const RATE_TARGET: f64 = 2.0;

pub fn l4(ws: &Workspace) -> Result<()> {
    setup::run()?;
    let slb = ws.build_slb()?;
    println!("==> slb bench-xdp (BPF_PROG_TEST_RUN)");
    let out = cmd::output(Command::new(&slb).args(["bench-xdp", "--json"]))?;
    let xdp: Value = serde_json::from_str(&out).context("parsing `slb bench-xdp --json`")?;
    println!("==> kernel floors (minimal programs: clock and flow-table operations only)");
    let floors = floor::measure()?;

    println!("==> namespace lab: XDP vs nftables DNAT, {WINDOW:?} each");
    let lab = compare(&slb)?;

    let report = json!({
        "metadata": metadata()?,
        "xdp_test_run": xdp,
        "kernel_floors": floors,
        "namespace_lab": lab,
    });
    let path = write_results(ws, RESULTS, &report)?;
    print!("{}", markdown(&report));
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// `cargo xtask bench api`: `slb bench-api --json`, written to `bench/results/api.json`.
pub fn api(ws: &Workspace) -> Result<()> {
    setup::run()?;
    let slb = ws.build_slb()?;
    println!("==> slb bench-api (1,000 listeners, 10,000 backends stored)");
    let out = cmd::output(Command::new(&slb).args(["bench-api", "--json"]))?;
    let api: Value = serde_json::from_str(&out).context("parsing `slb bench-api --json`")?;
    let report = json!({ "metadata": metadata()?, "api": api });
    let path = write_results(ws, "bench/results/api.json", &report)?;
    let mut s = String::from(
        "\n| action | clients | req/s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for c in api["cases"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} |\n",
            c["action"].as_str().unwrap_or("?"),
            c["concurrency"],
            c["requests_per_s"].as_f64().unwrap_or(f64::NAN),
            c["p50_ms"].as_f64().unwrap_or(f64::NAN),
            c["p99_ms"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    s.push_str(&format!(
        "\nSetBackendServers acknowledged → live in the BPF maps: p50 {:.0} ms, max {:.0} ms (target ≤ 100 ms); store {} KiB\n",
        api["set_to_live_p50_ms"].as_f64().unwrap_or(f64::NAN),
        api["set_to_live_max_ms"].as_f64().unwrap_or(f64::NAN),
        api["store_bytes"].as_u64().unwrap_or(0) / 1024
    ));
    print!("{s}");
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// `cargo xtask bench health`: `slb bench-health --json`, written to `bench/results/health.json`.
pub fn health(ws: &Workspace) -> Result<()> {
    setup::run()?;
    let slb = ws.build_slb()?;
    println!("==> slb bench-health (10,000 backends every 2 s: slb, then HAProxy; under a minute)");
    let out = cmd::output(Command::new(&slb).args(["bench-health", "--json"]))?;
    let health: Value = serde_json::from_str(&out).context("parsing `slb bench-health --json`")?;
    let report = json!({ "metadata": metadata()?, "health": health });
    let path = write_results(ws, "bench/results/health.json", &report)?;
    print!("{}", health_markdown(&health));
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// The table of `bench health` (the README's Health checks section is written from it).
fn health_markdown(h: &Value) -> String {
    let num = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let (s, p) = (&h["slb"], &h["haproxy"]);
    let mut out = format!(
        "\n| {} backends, TCP connect every {} s, {:.0} s window | slb | HAProxy {} | slb / HAProxy |\n| --- | ---: | ---: | ---: |\n",
        h["backends"],
        h["interval_s"],
        num(h, "window_s"),
        h["haproxy_version"].as_str().unwrap_or("?"),
    );
    out.push_str(&format!(
        "| checker CPU, % of one core | {:.1} | {:.1} | {:.2} |\n",
        num(s, "cpu_percent_of_core"),
        num(p, "cpu_percent_of_core"),
        num(h, "cpu_ratio_slb_over_haproxy"),
    ));
    out.push_str(&format!(
        "| CPU µs per check | {:.1} | {:.1} | {:.2} |\n",
        num(s, "cpu_us_per_check"),
        num(p, "cpu_us_per_check"),
        num(h, "cpu_per_check_ratio_slb_over_haproxy"),
    ));
    out.push_str(&format!(
        "| checks/s (SYNs seen at the backends) | {:.0} | {:.0} | {:.2} |\n",
        num(s, "checks_per_s"),
        num(p, "checks_per_s"),
        num(s, "checks_per_s") / num(p, "checks_per_s"),
    ));
    out.push_str(&format!(
        "| failed checks | {} | {} | |\n",
        s["failures"], p["failures"]
    ));
    let (ss, ps) = (&s["spread"], &p["spread"]);
    out.push_str(&format!(
        "| gap between two checks of a backend, mean ms | {:.1} | {:.1} | |\n",
        num(ss, "gap_mean_ms"),
        num(ps, "gap_mean_ms"),
    ));
    let dev = |v: &Value| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            num(v, "deviation_p50_ms"),
            num(v, "deviation_p99_ms"),
            num(v, "deviation_max_ms")
        )
    };
    out.push_str(&format!(
        "| \\|gap − {} s\\| p50 / p99 / max ms | {} | {} | |\n",
        h["interval_s"],
        dev(ss),
        dev(ps)
    ));
    let buckets = |v: &Value| {
        format!(
            "{} / {:.0} / {} ({:.2})",
            v["per_bucket_min"],
            num(v, "per_bucket_mean"),
            v["per_bucket_max"],
            num(v, "per_bucket_max_over_mean")
        )
    };
    out.push_str(&format!(
        "| checks per 100 ms min / mean / max (max ÷ mean) | {} | {} | |\n",
        buckets(ss),
        buckets(ps)
    ));
    let e = &h["slb_engine"];
    out.push_str(&format!(
        "\nslb engine: {:.0} probes/s, {} failed, probe latency p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; \
         HAProxy: {} of {} servers UP; SYNs lost by the capture: slb {}, HAProxy {}\n",
        num(e, "probes_per_s"),
        e["failures"],
        num(e, "latency_p50_us"),
        num(e, "latency_p99_us"),
        num(e, "latency_max_us"),
        h["haproxy_servers_up"],
        h["backends"],
        s["capture_drops"],
        p["capture_drops"],
    ));
    if let Some(examples) = e["failure_examples"].as_array().filter(|a| !a.is_empty()) {
        let examples: Vec<&str> = examples.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!("slb failures: {}\n", examples.join("; ")));
    }
    out
}

/// Writes `report` to `rel` under the workspace root; returns the path.
pub(crate) fn write_results(
    ws: &Workspace,
    rel: &str,
    report: &Value,
) -> Result<std::path::PathBuf> {
    let path = ws.root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub(crate) fn metadata() -> Result<Value> {
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    Ok(json!({
        "date": date.trim(),
        "kernel": kernel.trim(),
        "cpu_model": cpu,
        "nproc": thread::available_parallelism().map_or(0, usize::from),
    }))
}

/// Both load balancers on one lab, one after the other, with the same sinks and generator.
fn compare(slb: &Path) -> Result<Value> {
    let pins = OwnedDir(PIN_PATH.into());
    pins.remove()?;
    let lab = Lab::up(PREFIX, N, BACKENDS)?;
    add_sinks(&lab)?;
    let config = std::env::temp_dir().join(format!("slb-bench-{}.toml", std::process::id()));
    std::fs::write(&config, agent_config(&lab))
        .with_context(|| format!("writing {}", config.display()))?;

    let xdp = measure_xdp(slb, &config, &lab);
    let _ = std::fs::remove_file(&config);
    let xdp = xdp?;
    let nft = measure_nft(&lab)?;
    lab.down().context("tearing the bench lab down")?;

    let ratio = |key: &str| {
        let (x, n) = (xdp[key].as_f64(), nft[key].as_f64());
        match (x, n) {
            (Some(x), Some(n)) if n > 0.0 => json!(x / n),
            _ => Value::Null,
        }
    };
    let pps_ratio = ratio("delivered_pps");
    Ok(json!({
        "topology": format!(
            "lab {PREFIX} (client, LB, {BACKENDS} backends, veth, native XDP on the LB's veths); \
             UDP VIP:{PORT} -> backends:{PORT}"
        ),
        "generator": format!(
            "{SENDERS} threads in the client namespace running an XDP program with \
             BPF_PROG_RUN live frames (XDP_TX out of the client's veth), {} flows (random \
             source ports), {PAYLOAD} B payloads, as fast as they go; {}s warm-up then a {}s window",
            livegen::FLOWS, WARMUP.as_secs(), WINDOW.as_secs()
        ),
        "cpu_note": format!(
            "CPU is the whole machine's ({} cores) from /proc/stat over the window: generator, \
             sinks and forwarding share the cores, so cpu_ns_per_packet is end to end",
            thread::available_parallelism().map_or(0, usize::from)
        ),
        "xdp": xdp,
        "nftables": nft,
        "pps_ratio_xdp_over_nftables": pps_ratio,
        "backend_rx_pps_ratio_xdp_over_nftables": ratio("backend_rx_pps"),
        "cpu_ns_per_packet_ratio_xdp_over_nftables": ratio("cpu_ns_per_packet"),
        "rate_target": RATE_TARGET,
        "meets_rate_target": pps_ratio.as_f64().map(|r| r >= RATE_TARGET),
    }))
}

/// `slb serve` in the LB namespace for the window, then stopped and unloaded.
fn measure_xdp(slb: &Path, config: &Path, lab: &Lab) -> Result<Value> {
    let mut agent = Agent::start(slb, config, lab.lb_ns(), false, false)?;
    let measured = wait_ready(&mut agent).and_then(|()| measure(lab));
    let stopped = agent.stop();
    let unloaded = unload(slb, lab.lb_ns(), Path::new(PIN_PATH));
    let unpinned = OwnedDir(PIN_PATH.into()).remove();
    let measured = measured?;
    stopped.and(unloaded).and(unpinned)?;
    Ok(measured)
}

/// nftables DNAT in the LB namespace (the kernel forwards), for the window.
fn measure_nft(lab: &Lab) -> Result<Value> {
    let map: Vec<String> = lab
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", b.v4))
        .collect();
    let rules = format!(
        "table ip slbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {} udp dport {PORT} dnat to numgen inc mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
        lab.vip_v4(),
        map.join(", ")
    );
    nft(lab.lb_ns(), &rules).context("loading the nftables DNAT load balancer")?;
    // The table goes with the namespace when the lab is torn down.
    let mut v = measure(lab)?;
    v["rules"] = json!(rules);
    Ok(v)
}

/// The generator for warm-up plus window; counters and CPU over the window only.
fn measure(lab: &Lab) -> Result<Value> {
    let client = lab.client();
    let frame = Frame {
        src_mac: livegen::link(&client.ns, &client.iface)?.0,
        dst_mac: livegen::link(lab.lb_ns(), &client.lb_iface)?.0,
        src: client.v4,
        dst: lab.vip_v4(),
        dst_port: PORT,
        payload: PAYLOAD,
    };
    let generator = Generator::start(&client.ns, &client.iface, &frame, SENDERS)?;
    thread::sleep(WARMUP);
    let (sink0, rx0, cpu0, sent0) = (
        sink_total(lab)?,
        backend_rx(lab)?,
        CpuTimes::read()?,
        generator.sent(),
    );
    let started = Instant::now();
    thread::sleep(WINDOW);
    let (sink1, rx1, cpu1, sent1) = (
        sink_total(lab)?,
        backend_rx(lab)?,
        CpuTimes::read()?,
        generator.sent(),
    );
    let secs = started.elapsed().as_secs_f64();
    generator.stop()?;
    let delivered = sink1.saturating_sub(sink0);
    let busy_s = cpu1.busy.saturating_sub(cpu0.busy) as f64 / cpu0.ticks_per_s;
    let all_s = cpu1.total.saturating_sub(cpu0.total) as f64 / cpu0.ticks_per_s;
    if delivered == 0 {
        bail!("no datagram reached the backends; the load balancer under test does not forward");
    }
    Ok(json!({
        "window_s": secs,
        "sent_pps": sent1.saturating_sub(sent0) as f64 / secs,
        "delivered_pps": delivered as f64 / secs,
        "backend_rx_pps": rx1.saturating_sub(rx0) as f64 / secs,
        "cpu_busy_s": busy_s,
        "cpu_utilisation": if all_s > 0.0 { busy_s / all_s } else { 0.0 },
        "cpu_ns_per_packet": busy_s * 1e9 / delivered as f64,
    }))
}

fn agent_config(lab: &Lab) -> String {
    let servers: Vec<String> = lab
        .backends()
        .iter()
        .map(|b| format!("{{ ServerId = \"{}\", Weight = 100 }}", b.v4))
        .collect();
    let ifaces: Vec<String> = lab.lb_ifaces().iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "[Agent]\nInterfaces = [{}]\nXdpMode = \"native\"\nPinPath = \"{PIN_PATH}\"\nFlowTableSize = 65536\n\n\
         [[LoadBalancers]]\nLoadBalancerId = \"lb-bench\"\nAddress = \"{}\"\nBackendServers = [{}]\n\n\
         [[LoadBalancers.Listeners]]\nListenerProtocol = \"udp\"\nListenerPort = {PORT}\nBackendServerPort = {PORT}\nScheduler = \"wrr\"\n",
        ifaces.join(", "),
        lab.vip_v4(),
        servers.join(", ")
    )
}

/// Packets received by the backends' `eth0`, summed, whatever they are: a cross-check of the
/// sinks' count.
fn backend_rx(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for b in lab.backends() {
        let out = cmd::output(
            Command::new("ip").args(["-n", &b.ns, "-s", "-j", "link", "show", &b.iface]),
        )?;
        let v: Value = serde_json::from_str(&out).context("parsing `ip -s -j link show`")?;
        total += v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .context("`ip -s -j link` gave no stats64.rx.packets")?;
    }
    Ok(total)
}

/// Aggregate jiffies from the first line of /proc/stat.
pub(crate) struct CpuTimes {
    pub(crate) busy: u64,
    pub(crate) total: u64,
    pub(crate) ticks_per_s: f64,
}

impl CpuTimes {
    pub(crate) fn read() -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("/proc/stat has no aggregate cpu line")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("parsing /proc/stat")?;
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        let idle = at(3) + at(4);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .context("sysconf(CLK_TCK)")?
            .context("CLK_TCK is not defined")?;
        Ok(CpuTimes {
            busy,
            total: busy + idle,
            ticks_per_s: ticks as f64,
        })
    }
}

/// A counting drop rule for UDP `:PORT` at every backend's ingress (nftables netdev hook): what
/// reached a backend is counted and freed before the stack, identically for both load balancers.
const SINK_TABLE: &str = "slbsink";

/// The table goes with the backends' namespaces when the lab is torn down.
fn add_sinks(lab: &Lab) -> Result<()> {
    for b in lab.backends() {
        let rules = format!(
            "table netdev {SINK_TABLE} {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority 0; policy accept;\n    \
             ip daddr {} udp dport {PORT} counter drop\n  }}\n}}\n",
            b.iface, b.v4
        );
        nft(&b.ns, &rules).with_context(|| format!("adding the counting sink in {}", b.ns))?;
    }
    Ok(())
}

/// Packets counted by all sinks so far.
fn sink_total(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for b in lab.backends() {
        let out = cmd::output(
            lab::netns_command(&b.ns, "nft").args(["-j", "list", "table", "netdev", SINK_TABLE]),
        )?;
        let v: Value = serde_json::from_str(&out).context("parsing `nft -j list table`")?;
        total += v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["rule"]["expr"].as_array())
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .with_context(|| format!("no sink counter in {}", b.ns))?;
    }
    Ok(total)
}

/// `nft -f` of `rules` inside `ns`.
fn nft(ns: &str, rules: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("slb-bench-{}-{ns}.nft", std::process::id()));
    std::fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    let loaded = cmd::run(lab::netns_command(ns, "nft").arg("-f").arg(&file));
    let _ = std::fs::remove_file(&file);
    loaded
}

/// Waits until the agent prints `slb ready`.
pub(crate) fn wait_ready(agent: &mut Agent) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match agent.lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with("slb ready") => return Ok(()),
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = agent.child.try_wait()? {
            seen.extend(agent.lines.try_iter());
            bail!("the agent exited ({status}):\n{}", seen.join("\n"));
        }
    }
    bail!(
        "the agent did not print `slb ready` within {} s:\n{}",
        READY_TIMEOUT.as_secs(),
        seen.join("\n")
    )
}

/// The summary table printed at the end (the README's Benchmarks section is written from it).
fn markdown(r: &Value) -> String {
    let mut s = String::from(
        "\n| case | mean ns/packet | net of timer ns | target | verdict |\n| --- | ---: | ---: | --- | --- |\n",
    );
    let empty = Vec::new();
    let cases = r["xdp_test_run"]["cases"].as_array().unwrap_or(&empty);
    for c in cases.iter().filter(|c| c["path"] != "overhead") {
        let target = match (c["target_ns"].as_f64(), c["meets_target"].as_bool()) {
            (Some(t), Some(true)) => format!("≤ {t:.0}: met"),
            (Some(t), _) => format!("≤ {t:.0}: **missed**"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {target} | {} |\n",
            c["name"].as_str().unwrap_or("?"),
            c["mean_ns"].as_f64().unwrap_or(f64::NAN),
            c["net_mean_ns"].as_f64().unwrap_or(f64::NAN),
            c["verdict"].as_str().unwrap_or("?"),
        ));
    }
    let f = &r["kernel_floors"];
    let loop_ns = f["empty_program_ns"].as_f64().unwrap_or(f64::NAN);
    s.push_str("\n| kernel floor (minimal program) | ns/packet | net of the empty program |\n| --- | ---: | ---: |\n");
    for (name, key, what) in [
        ("empty program", "empty_program_ns", ""),
        ("hit floor", "hit_floor_ns", "hit_floor_what"),
        ("new-flow floor", "new_flow_floor_ns", "new_flow_floor_what"),
    ] {
        let ns = f[key].as_f64().unwrap_or(f64::NAN);
        let name = match f[what].as_str() {
            Some(w) => format!("{name}: {w}"),
            None => name.to_string(),
        };
        s.push_str(&format!("| {name} | {ns:.0} | {:.0} |\n", ns - loop_ns));
    }
    s.push_str("\n| Maglev build | table entries | median |\n| ---: | ---: | ---: |\n");
    let builds = r["xdp_test_run"]["maglev_build"]
        .as_array()
        .unwrap_or(&empty);
    for m in builds {
        s.push_str(&format!(
            "| {} backends | {} | {:.2} ms |\n",
            m["backends"],
            m["table_size"],
            m["median_us"].as_f64().unwrap_or(f64::NAN) / 1000.0
        ));
    }
    let lab = &r["namespace_lab"];
    s.push_str(
        "\n| namespace lab, UDP 64 B | delivered pps | backend rx pps | CPU busy | CPU ns/packet |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for (name, key) in [("slb XDP", "xdp"), ("nftables DNAT", "nftables")] {
        let m = &lab[key];
        s.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0} % | {:.0} |\n",
            m["delivered_pps"].as_f64().unwrap_or(f64::NAN),
            m["backend_rx_pps"].as_f64().unwrap_or(f64::NAN),
            m["cpu_utilisation"].as_f64().unwrap_or(f64::NAN) * 100.0,
            m["cpu_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    s.push_str(&format!(
        "\nXDP / nftables delivered pps: {:.2} (target ≥ {RATE_TARGET})\n",
        lab["pps_ratio_xdp_over_nftables"]
            .as_f64()
            .unwrap_or(f64::NAN)
    ));
    s
}
