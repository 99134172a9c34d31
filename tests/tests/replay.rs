//! Runs every packet fixture in `tests/fixtures/*.toml` through the real XDP program with
//! `BPF_PROG_TEST_RUN` (architecture.md §3). `SLB_BLESS=1` rewrites each step's `expect` and
//! `expect_hex` from what the program did. Format: `tests/fixtures/README.md`.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail};
use slb::{
    config,
    dataplane::image::{listener_key, BackendAddr, Image},
    replay::{action_name, Harness, Ingress},
    simulate, stats,
};
use tests::{build, decode_verified, hex, to_hex};
use toml_edit::{DocumentMut, Item, Value};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    v.sort();
    v
}

fn str_of<'a>(t: &'a toml_edit::Table, k: &str) -> Option<&'a str> {
    t.get(k).and_then(Item::as_str)
}

fn backends_of(t: &toml_edit::Table, k: &str) -> anyhow::Result<BTreeSet<BackendAddr>> {
    let mut out = BTreeSet::new();
    if let Some(a) = t.get(k).and_then(Item::as_array) {
        for v in a {
            let s = v.as_str().ok_or_else(|| anyhow!("{k} holds strings"))?;
            out.insert(BackendAddr(s.parse()?));
        }
    }
    Ok(out)
}

fn counter(h: &Harness, image: &Image, name: &str) -> anyhow::Result<u64> {
    let s = stats::collect(&h.sync.maps)?;
    let (scope, rest) = name
        .split_once('.')
        .ok_or_else(|| anyhow!("counter {name}"))?;
    let (obj, field) = rest.rsplit_once('.').unwrap_or(("", rest));
    let find = |c: &[(&str, u64)]| c.iter().find(|(n, _)| *n == field).map(|(_, v)| *v);
    let v = match scope {
        "global" => find(&s.global),
        "listener" => {
            let label = image
                .listeners
                .iter()
                .find(|(_, l)| l.name == obj)
                .map(|(k, _)| stats::listener_label(k))
                .ok_or_else(|| anyhow!("no listener {obj}"))?;
            s.listeners
                .iter()
                .find(|l| l.listener == label)
                .and_then(|l| find(&l.counters))
        }
        "backend" => s.backends.iter().find(|b| b.backend == obj).and_then(|b| {
            if field == "active_flows" {
                Some(b.active_flows)
            } else {
                find(&b.counters)
            }
        }),
        _ => None,
    };
    v.ok_or_else(|| anyhow!("unknown counter {name}"))
}

/// Runs one fixture on the current thread (which moves into a private network namespace).
fn run_fixture(path: &Path, bless: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut doc: DocumentMut = text.parse()?;
    let cfg_text = doc
        .get("config")
        .and_then(Item::as_str)
        .ok_or_else(|| anyhow!("missing `config`"))?
        .to_string();
    let cfg = config::parse(&cfg_text, "config")?;
    let mut down = BTreeSet::new();
    let mut image = Image::build(&cfg, &down);
    let mut h = Harness::new(&image, cfg.agent.flow_table_size)?;
    let mut cfg = cfg;
    let mut outputs: Vec<Option<SocketAddr>> = Vec::new();
    let steps = doc
        .get_mut("step")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| anyhow!("no [[step]]"))?;
    for (i, step) in steps.iter_mut().enumerate() {
        let ctx = |e: anyhow::Error| e.context(format!("step {}", i + 1));
        if let Some(new_cfg) = str_of(step, "reload") {
            cfg = config::parse(new_cfg, "reload").map_err(|e| ctx(e.into()))?;
        }
        let set_down = backends_of(step, "set_down").map_err(ctx)?;
        let set_up = backends_of(step, "set_up").map_err(ctx)?;
        for b in &set_down {
            h.sync.set_down(b, true)?;
            down.insert(*b);
        }
        for b in &set_up {
            h.sync.set_down(b, false)?;
            down.remove(b);
        }
        // Health changes rebuild the rings only when the step says so, so that a fixture
        // can prove the kernel honours the flag on its own.
        if step.get("reload").is_some() || step.get("rebuild").and_then(Item::as_bool) == Some(true)
        {
            image = Image::build(&cfg, &down);
            h.sync.apply(&image)?;
        }
        let packet = match (str_of(step, "packet"), str_of(step, "packet_hex")) {
            (Some(p), _) => build(p).map_err(ctx)?,
            (None, Some(x)) => hex(x).map_err(ctx)?,
            (None, None) => {
                outputs.push(None);
                continue;
            }
        };
        let ingress = match str_of(step, "ingress") {
            Some("lo") => Ingress::Lo,
            _ => Ingress::Lb,
        };
        let out = h.run(&packet, ingress)?;
        let action = action_name(out.action);
        let forwarded = action == "tx" || action == "redirect";
        let decoded = if forwarded {
            Some(decode_verified(&out.data).map_err(|e| ctx(e.context("output packet")))?)
        } else {
            None
        };
        outputs.push(decoded.as_ref().map(|d| SocketAddr::new(d.dst, d.dport)));
        if bless {
            step.insert("expect", toml_edit::value(action));
            if forwarded {
                step.insert("expect_hex", toml_edit::value(to_hex(&out.data)));
                step.remove("expect_packet");
            }
            continue;
        }
        let want = str_of(step, "expect").ok_or_else(|| ctx(anyhow!("missing expect")))?;
        if want != action {
            bail!("step {}: action {action}, expected {want}", i + 1);
        }
        let expected_bytes = match (str_of(step, "expect_packet"), str_of(step, "expect_hex")) {
            (Some(p), _) => Some(build(p).map_err(ctx)?),
            (None, Some(x)) => Some(hex(x).map_err(ctx)?),
            _ => None,
        };
        if let Some(exp) = expected_bytes {
            if exp != out.data {
                bail!(
                    "step {}: output differs\n  got      {}\n  expected {}",
                    i + 1,
                    to_hex(&out.data),
                    to_hex(&exp)
                );
            }
        }
        let got_backend = decoded.as_ref().map(|d| SocketAddr::new(d.dst, d.dport));
        if let Some(b) = str_of(step, "expect_backend") {
            let b: SocketAddr = b.parse()?;
            if got_backend != Some(b) {
                bail!("step {}: went to {got_backend:?}, expected {b}", i + 1);
            }
        }
        if let Some(n) = step.get("expect_same_as").and_then(Item::as_integer) {
            let other = outputs.get((n - 1) as usize).copied().flatten();
            if got_backend.is_none() || got_backend != other {
                bail!(
                    "step {}: went to {got_backend:?}, step {n} went to {other:?}",
                    i + 1
                );
            }
        }
        if let Some(n) = step.get("expect_other_than").and_then(Item::as_integer) {
            let other = outputs.get((n - 1) as usize).copied().flatten();
            if got_backend.is_none() || got_backend == other {
                bail!("step {}: went to {got_backend:?}, like step {n}", i + 1);
            }
        }
        if step.get("simulate").and_then(Item::as_bool) == Some(true) {
            // `slb simulate` must predict the kernel's choice from the same table.
            let p = etherparse::SlicedPacket::from_ethernet(&packet)?;
            let (src, dst, proto) = match (&p.net, &p.transport) {
                (Some(etherparse::NetSlice::Ipv4(ip)), Some(t)) => {
                    let (s, d, pr) = ports(t);
                    (
                        SocketAddr::new(ip.header().source_addr().into(), s),
                        SocketAddr::new(ip.header().destination_addr().into(), d),
                        pr,
                    )
                }
                (Some(etherparse::NetSlice::Ipv6(ip)), Some(t)) => {
                    let (s, d, pr) = ports(t);
                    (
                        SocketAddr::new(ip.header().source_addr().into(), s),
                        SocketAddr::new(ip.header().destination_addr().into(), d),
                        pr,
                    )
                }
                _ => bail!("step {}: simulate needs an IP packet", i + 1),
            };
            let payload = match &p.transport {
                Some(etherparse::TransportSlice::Udp(u)) => u.payload().to_vec(),
                _ => Vec::new(),
            };
            let li = image
                .listeners
                .get(&listener_key(dst.ip(), dst.port(), proto))
                .ok_or_else(|| anyhow!("step {}: no listener for simulate", i + 1))?;
            let start = simulate::start_index(li, src, dst, &payload)
                .ok_or_else(|| anyhow!("step {}: scheduler not simulatable", i + 1))?;
            let sim = simulate::pick(li, start).map(|e| e.backend.0);
            if sim != got_backend {
                bail!(
                    "step {}: simulate says {sim:?}, kernel chose {got_backend:?}",
                    i + 1
                );
            }
        }
    }
    if bless {
        std::fs::write(path, doc.to_string())?;
        return Ok(());
    }
    if let Some(t) = doc.get("counters").and_then(Item::as_table) {
        for (name, v) in t.iter() {
            let want = v
                .as_integer()
                .ok_or_else(|| anyhow!("counter {name} must be an integer"))?;
            let got = counter(&h, &image, name)?;
            if got != want as u64 {
                bail!("counter {name} = {got}, expected {want}");
            }
        }
    }
    if let Some(Value::Integer(n)) = doc.get("flow_count").and_then(Item::as_value) {
        let got = h.sync.maps.flows.keys().count();
        if got != *n.value() as usize {
            bail!("{got} flows in the table, expected {}", n.value());
        }
    }
    Ok(())
}

fn ports(t: &etherparse::TransportSlice) -> (u16, u16, u8) {
    match t {
        etherparse::TransportSlice::Tcp(t) => {
            (t.source_port(), t.destination_port(), slb_common::PROTO_TCP)
        }
        etherparse::TransportSlice::Udp(u) => {
            (u.source_port(), u.destination_port(), slb_common::PROTO_UDP)
        }
        _ => (0, 0, 0),
    }
}

#[test]
fn packet_fixtures() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN and network namespaces need root");
        return Ok(());
    }
    let bless = std::env::var_os("SLB_BLESS").is_some();
    let files = fixtures();
    assert!(!files.is_empty(), "no fixtures found");
    let mut failures = Vec::new();
    for f in &files {
        let path = f.clone();
        // Each fixture gets a fresh thread, hence its own network namespace and program.
        let r = std::thread::spawn(move || run_fixture(&path, bless))
            .join()
            .map_err(|_| anyhow!("panicked"))
            .and_then(|r| r);
        if let Err(e) = r {
            failures.push(format!("{}: {e:#}", f.display()));
        }
    }
    println!("{} fixtures, {} failed", files.len(), failures.len());
    if !failures.is_empty() {
        bail!("fixture failures:\n{}", failures.join("\n"));
    }
    Ok(())
}
