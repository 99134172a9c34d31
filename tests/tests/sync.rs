//! The agent's map sync against the real program's maps: a reload writes only the difference
//! and rebuilds a ring only when its members, weights or health changed; flow tables under
//! pressure evict old flows without corrupting live ones; Maglev tables are byte-identical
//! across processes.
use std::collections::BTreeSet;

use anyhow::anyhow;
use slb::{
    config,
    dataplane::{
        image::{BackendAddr, Image},
        sync::SyncReport,
    },
    replay::{action_name, Harness, Ingress},
};
use tests::{build, decode_verified};

/// Runs `f` on a fresh thread: `Harness::new` moves its thread into a private namespace.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(f)
        .join()
        .map_err(|_| anyhow!("panicked"))?
}

fn cfg(w1: u8, persistence: u32) -> anyhow::Result<config::Config> {
    let text = format!(
        r#"
[Agent]
FlowTableSize = 4096
[[LoadBalancers]]
LoadBalancerId = "lb-1"
Address = "10.0.0.10"
[[LoadBalancers.VServerGroups]]
VServerGroupId = "rsp-a"
BackendServers = [ {{ ServerId = "10.1.0.1", Port = 80, Weight = {w1} }}, {{ ServerId = "10.1.0.2", Port = 80 }} ]
[[LoadBalancers.VServerGroups]]
VServerGroupId = "rsp-b"
BackendServers = [ {{ ServerId = "10.2.0.1", Port = 80 }}, {{ ServerId = "10.2.0.2", Port = 80 }} ]
[[LoadBalancers.Listeners]]
ListenerProtocol = "tcp"
ListenerPort = 80
VServerGroupId = "rsp-a"
Scheduler = "sch"
[[LoadBalancers.Listeners]]
ListenerProtocol = "udp"
ListenerPort = 53
VServerGroupId = "rsp-b"
Scheduler = "tch"
PersistenceTimeout = {persistence}
"#
    );
    Ok(config::parse(&text, "sync.toml")?)
}

/// Reloads write only the difference (SIGHUP semantics); rings are rebuilt only for changed
/// members, weights or health.
#[test]
fn reload_writes_only_the_difference() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: BPF maps need root");
        return Ok(());
    }
    on_thread(|| {
        let none = BTreeSet::new();
        let a = Image::build(&cfg(100, 0)?, &none);
        let mut h = Harness::new(&a, 4096)?;
        assert_eq!(
            h.sync.apply(&a)?,
            SyncReport::default(),
            "same image rewrote something"
        );
        // A weight change rebuilds exactly the ring of the listener using that group.
        let r = h.sync.apply(&Image::build(&cfg(50, 0)?, &none))?;
        assert_eq!(
            (r.tables_written, r.listeners_changed, r.listeners_added),
            (1, 1, 0),
            "{r:?}"
        );
        // A timeout change touches the listener record, not its ring.
        let r = h.sync.apply(&Image::build(&cfg(50, 60)?, &none))?;
        assert_eq!((r.tables_written, r.listeners_changed), (0, 1), "{r:?}");
        // Health: a backend of rsp-b going down rebuilds that ring only.
        let down: BTreeSet<BackendAddr> = [BackendAddr("10.2.0.1:80".parse()?)].into();
        let r = h.sync.apply(&Image::build(&cfg(50, 60)?, &down))?;
        assert_eq!((r.tables_written, r.listeners_changed), (1, 1), "{r:?}");
        assert_eq!(
            h.sync.apply(&Image::build(&cfg(50, 60)?, &down))?,
            SyncReport::default()
        );
        Ok(())
    })
}

/// Table pressure evicts the oldest flows; the newest flows keep their backends.
#[test]
fn flow_table_pressure_keeps_recent_flows() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: BPF maps need root");
        return Ok(());
    }
    on_thread(|| {
        let text = r#"
[Agent]
FlowTableSize = 1024
[[LoadBalancers]]
LoadBalancerId = "lb-1"
Address = "10.0.0.10"
BackendServers = [ { ServerId = "10.1.0.1" }, { ServerId = "10.1.0.2" }, { ServerId = "10.1.0.3" } ]
[[LoadBalancers.Listeners]]
ListenerProtocol = "tcp"
ListenerPort = 80
BackendServerPort = 8080
Scheduler = "wrr"
"#;
        let c = config::parse(text, "lru.toml")?;
        let mut h = Harness::new(&Image::build(&c, &BTreeSet::new()), c.agent.flow_table_size)?;
        let mut chosen = Vec::new();
        for port in 10000..13000u16 {
            let syn = build(&format!(
                "ipv4(src=192.0.2.1,dst=10.0.0.10)/tcp(sport={port},dport=80,flags=S)"
            ))?;
            let o = h.run(&syn, Ingress::Lb)?;
            assert_eq!(action_name(o.action), "tx");
            chosen.push(decode_verified(&o.data)?.dst);
        }
        let flows = h.sync.maps.flows.keys().count();
        assert!(flows <= 1024, "{flows} flows in a 1024-entry table");
        for (i, port) in (12800..13000u16).enumerate() {
            let ack = build(&format!(
                "ipv4(src=192.0.2.1,dst=10.0.0.10)/tcp(sport={port},dport=80,flags=A)"
            ))?;
            let o = h.run(&ack, Ingress::Lb)?;
            assert_eq!(
                action_name(o.action),
                "tx",
                "recent flow {port} was evicted"
            );
            assert_eq!(
                decode_verified(&o.data)?.dst,
                chosen[2800 + i],
                "flow {port} changed backend"
            );
        }
        Ok(())
    })
}

fn table_digest() -> anyhow::Result<String> {
    use slb::dataplane::maglev::{build_for_capacity, RingMember};
    let names: Vec<String> = (0..100)
        .map(|i| format!("10.{}.{}.1:80", i / 10, i % 10))
        .collect();
    let members: Vec<RingMember> = names
        .iter()
        .enumerate()
        .map(|(i, n)| RingMember {
            name: n,
            slot: i as u32,
            weight: 1 + (i as u32 % 7) * 10,
        })
        .collect();
    let table = build_for_capacity(&members, 128);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in table {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

/// B5.8 (frozen algorithm): two separate processes build byte-identical Maglev tables.
#[test]
fn maglev_tables_identical_across_processes() -> anyhow::Result<()> {
    if std::env::var_os("SLB_MAGLEV_CHILD").is_some() {
        println!("digest={}", table_digest()?);
        return Ok(());
    }
    let me = std::env::current_exe()?;
    let mut digests = Vec::new();
    for _ in 0..2 {
        let out = std::process::Command::new(&me)
            .args([
                "--exact",
                "maglev_tables_identical_across_processes",
                "--nocapture",
            ])
            .env("SLB_MAGLEV_CHILD", "1")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let d = text
            .lines()
            .find_map(|l| l.strip_prefix("digest="))
            .ok_or_else(|| anyhow!("child printed no digest: {text}"))?
            .to_string();
        digests.push(d);
    }
    digests.push(table_digest()?);
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    Ok(())
}

/// Listeners with the same table share one slab region; removing one leaves the other's table
/// in place and forwarding (B4.1: an instance's listeners share its default group).
#[test]
fn identical_tables_share_one_slab_region() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: BPF maps need root");
        return Ok(());
    }
    on_thread(|| {
        let text = |ports: &[u16]| {
            let mut t = String::from(
                "[Agent]\nFlowTableSize = 4096\n[[LoadBalancers]]\nLoadBalancerId = \"lb-1\"\nAddress = \"10.0.0.10\"\n\
                 BackendServers = [ { ServerId = \"10.1.0.1\", Weight = 30 }, { ServerId = \"10.1.0.2\", Weight = 70 } ]\n",
            );
            for p in ports {
                t.push_str(&format!(
                    "[[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = {p}\nBackendServerPort = 8080\n"
                ));
            }
            config::parse(&t, "share.toml")
        };
        let none = BTreeSet::new();
        let both = Image::build(&text(&[80, 81])?, &none);
        let mut h = Harness::new(&both, 4096)?;
        let offs: Vec<(u32, u32)> = h
            .sync
            .listener_metas()
            .map(|m| (m.table_off, m.table_len))
            .collect();
        assert_eq!(offs.len(), 2);
        assert_eq!(offs[0], offs[1], "identical tables in one region");
        let r = h.sync.apply(&Image::build(&text(&[81])?, &none))?;
        assert_eq!((r.listeners_removed, r.tables_written), (1, 0), "{r:?}");
        let left: Vec<(u32, u32)> = h
            .sync
            .listener_metas()
            .map(|m| (m.table_off, m.table_len))
            .collect();
        assert_eq!(
            left,
            vec![offs[0]],
            "the remaining listener keeps the shared region"
        );
        let syn = build("ipv4(src=192.0.2.1,dst=10.0.0.10)/tcp(sport=1000,dport=81,flags=S)")?;
        let o = h.run(&syn, Ingress::Lb)?;
        assert_eq!(action_name(o.action), "tx");
        // A new listener with the same table reuses the region instead of writing another.
        let r = h.sync.apply(&Image::build(&text(&[81, 82])?, &none))?;
        assert_eq!((r.listeners_added, r.tables_written), (1, 0), "{r:?}");
        Ok(())
    })
}
