//! Crash safety of the state store: `slb serve` is killed with SIGKILL at random points while
//! a client streams mutations; after every restart each acknowledged change is present and the
//! store loads (the agent would refuse an inconsistent one).
use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use slb::api::client::Client;
use tests::api::start_agent;

const ROUNDS: u32 = 12;
const PORT: u16 = 18_668;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_mutations_loses_no_acknowledged_change() -> anyhow::Result<()> {
    if !tests::is_root() {
        eprintln!("skipped: the agent loads its XDP program, which needs root");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("slb-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        "[[AccessKeys]]\nAccessKeyId = \"k\"\nAccessKeySecret = \"s\"\n",
    )?;
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let pin = format!("/sys/fs/bpf/slb-test-crash-{}", std::process::id());
    let config = dir.join("slb.toml");
    std::fs::write(
        &config,
        format!(
            "[Agent]\nPinPath = \"{pin}\"\nFlowTableSize = 4096\n\n[Api]\nListen = \"127.0.0.1:{PORT}\"\nKeysFile = \"{}\"\nStatePath = \"{}\"\nVipPool = [\"10.68.0.0/16\"]\n",
            keys.display(),
            dir.join("state.redb").display()
        ),
    )?;
    let client = Client {
        addr: SocketAddr::from(([127, 0, 0, 1], PORT)),
        key_id: "k".into(),
        secret: "s".into(),
        tls: None,
    };
    let mut acked: Vec<String> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..ROUNDS {
        let mut agent = start_agent(&config)?.0;
        // Everything acknowledged so far is there.
        let (s, all) = client
            .call("DescribeLoadBalancers", &[("RegionId", "local")])
            .await?;
        assert_eq!(s, 200, "{all}");
        let present: std::collections::BTreeSet<String> = all["LoadBalancers"]["LoadBalancer"]
            .as_array()
            .context("list")?
            .iter()
            .filter_map(|l| l["LoadBalancerName"].as_str().map(str::to_string))
            .collect();
        for name in &acked {
            assert!(
                present.contains(name),
                "round {round}: acknowledged {name} lost"
            );
        }
        // Stream creations and kill the agent after a random delay, mid-stream.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(30 + seed % 300);
        let c = client.clone();
        let writer = tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0.. {
                let name = format!("r{round}-{i}");
                match c
                    .call(
                        "CreateLoadBalancer",
                        &[("RegionId", "local"), ("LoadBalancerName", &name)],
                    )
                    .await
                {
                    Ok((200, _)) => done.push(name),
                    Ok((s, body)) => panic!("round {round}: {s} {body}"),
                    Err(_) => break, // the agent is gone
                }
            }
            done
        });
        tokio::time::sleep(delay).await;
        agent.kill()?;
        agent.wait()?;
        let done = writer.await?;
        eprintln!(
            "round {round}: killed after {delay:?}, {} acknowledged creations",
            done.len()
        );
        acked.extend(done);
    }
    let agent = start_agent(&config).map(|(child, _)| child);
    let mut agent = agent?;
    let (_, all) = client
        .call("DescribeLoadBalancers", &[("RegionId", "local")])
        .await?;
    let n = all["LoadBalancers"]["LoadBalancer"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(
        n >= acked.len(),
        "{n} instances for {} acknowledged",
        acked.len()
    );
    agent.kill()?;
    agent.wait()?;
    let _ = slb::dataplane::loader::unload(std::path::Path::new(&pin));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
