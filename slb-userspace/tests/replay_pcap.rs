//! `slb replay --config FILE --pcap-in IN --pcap-out OUT [--json]`, run as the binary that
//! outside tools call: one JSON object per packet, the summary as the last line, and exactly
//! the forwarded packets, translated, in the output pcap.
use std::process::Command;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use slb::replay::pcap::{self, Record};

const CONFIG: &str = r#"
[Agent]
FlowTableSize = 4096
[[LoadBalancers]]
LoadBalancerId = "lb-1"
Address = "10.0.0.10"
BackendServers = [ { ServerId = "10.1.0.1" } ]
[[LoadBalancers.Listeners]]
ListenerProtocol = "tcp"
ListenerPort = 80
BackendServerPort = 8080
[[LoadBalancers.Listeners]]
ListenerProtocol = "udp"
ListenerPort = 53
BackendServerPort = 5353
Status = "stopped"
"#;

fn frame(dst: [u8; 4], tcp: bool) -> anyhow::Result<Vec<u8>> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 1]).ipv4(
        [192, 0, 2, 1],
        dst,
        64,
    );
    let mut v = Vec::new();
    if tcp {
        b.tcp(40000, 80, 1, 65535).syn().write(&mut v, &[])?;
    } else {
        b.udp(40000, 53).write(&mut v, b"q")?;
    }
    Ok(v)
}

#[test]
fn pcap_replay_reports_verdicts_and_writes_forwarded_packets() -> anyhow::Result<()> {
    // SAFETY: plain libc call.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("slb-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cfg, pin, pout) = (
        dir.join("c.toml"),
        dir.join("in.pcap"),
        dir.join("out.pcap"),
    );
    std::fs::write(&cfg, CONFIG)?;
    let packets = [
        frame([10, 0, 0, 10], true)?,  // SYN to the TCP listener: tx
        frame([10, 9, 9, 9], true)?,   // not a VIP: pass
        frame([10, 0, 0, 10], false)?, // stopped UDP listener: drop (B3.13)
    ];
    let records: Vec<Record> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| Record {
            ts_sec: 1_700_000_000 + i as u32,
            ts_frac: 0,
            data: p.clone(),
        })
        .collect();
    pcap::write(&pin, &records)?;
    let out = Command::new(env!("CARGO_BIN_EXE_slb"))
        .arg("replay")
        .arg("--config")
        .arg(&cfg)
        .arg("--pcap-in")
        .arg(&pin)
        .arg("--pcap-out")
        .arg(&pout)
        .arg("--json")
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some("replayed 3 packets: tx=1 redirect=0 pass=1 drop=1 aborted=0")
    );
    let verdicts: Vec<serde_json::Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let got: Vec<(u64, String)> = verdicts
        .iter()
        .map(|v| {
            (
                v["index"].as_u64().unwrap_or(99),
                v["verdict"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(0, "tx".into()), (1, "pass".into()), (2, "drop".into())]
    );
    assert_eq!(
        verdicts[0]["output_len"].as_u64(),
        Some(packets[0].len() as u64)
    );
    let written = pcap::read(&pout)?;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].ts_sec, 1_700_000_000);
    let p = SlicedPacket::from_ethernet(&written[0].data)?;
    match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
            assert_eq!(ip.header().destination(), [10, 1, 0, 1]);
            assert_eq!(t.destination_port(), 8080);
        }
        other => anyhow::bail!("unexpected output {other:?}"),
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
