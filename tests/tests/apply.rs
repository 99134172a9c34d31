//! `slb export` and `slb apply [--dry-run]` (issue: the TOML file and the API are one model):
//! the real binary against an API server on loopback with a real store. An export applies
//! unchanged with no changes (round trip); a file's changes are planned, applied in one
//! transaction, and visible to the API; bad files change nothing.
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tests::api::{slb_binary, TestApi, KEY_ID, SECRET};

struct Cli {
    endpoint: String,
    keys: PathBuf,
}

impl Cli {
    fn new(t: &TestApi) -> Cli {
        let keys = t.dir.join("keys.toml");
        std::fs::write(
            &keys,
            format!("[[AccessKeys]]\nAccessKeyId = \"{KEY_ID}\"\nAccessKeySecret = \"{SECRET}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Cli {
            endpoint: t.client.addr.to_string(),
            keys,
        }
    }

    /// Runs `slb ARGS --endpoint … --keys-file …` off the runtime's threads.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(slb_binary().unwrap());
        cmd.args(args)
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--keys-file")
            .arg(&self.keys);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    async fn export(&self) -> String {
        let out = self.run(&["export"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `slb apply`: (success, stdout lines, stderr).
    async fn apply(&self, file: &Path, dry_run: bool) -> (bool, Vec<String>, String) {
        let f = file.to_str().unwrap();
        let args: Vec<&str> = if dry_run {
            vec!["apply", f, "--dry-run"]
        } else {
            vec!["apply", f]
        };
        let out = self.run(&args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        (
            out.status.success(),
            stdout.lines().map(str::to_string).collect(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn state(t: &mut TestApi) -> Value {
    t.ok("ExportConfiguration", &[]).await["Configuration"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_apply_round_trip_and_plan() {
    let mut t = TestApi::start("apply").await.unwrap();
    let cli = Cli::new(&t);
    // State built through the API.
    let lb = t
        .ok("CreateLoadBalancer", &[("LoadBalancerName", "web")])
        .await;
    let id = lb["LoadBalancerId"].as_str().unwrap().to_string();
    let g = t
        .ok(
            "CreateVServerGroup",
            &[
                ("LoadBalancerId", &id),
                ("VServerGroupName", "g"),
                ("BackendServers", r#"[{"ServerId":"10.66.1.1","Port":80}]"#),
            ],
        )
        .await;
    let gid = g["VServerGroupId"].as_str().unwrap().to_string();
    let acl = t.ok("CreateAccessControlList", &[("AclName", "a")]).await;
    let acl = acl["AclId"].as_str().unwrap().to_string();
    t.ok(
        "AddAccessControlListEntry",
        &[
            ("AclId", &acl),
            ("AclEntrys", r#"[{"entry":"10.9.0.0/16"}]"#),
        ],
    )
    .await;
    let common = [
        ("LoadBalancerId", id.as_str()),
        ("VServerGroupId", gid.as_str()),
        ("Bandwidth", "-1"),
    ];
    let mut tcp = common.to_vec();
    tcp.extend([
        ("ListenerPort", "80"),
        ("AclStatus", "on"),
        ("AclId", acl.as_str()),
        ("AclType", "white"),
    ]);
    t.ok("CreateLoadBalancerTCPListener", &tcp).await;
    let mut http = common.to_vec();
    http.extend([
        ("ListenerPort", "8080"),
        ("StickySession", "off"),
        ("HealthCheck", "off"),
    ]);
    t.ok("CreateLoadBalancerHTTPListener", &http).await;
    t.ok(
        "CreateRules",
        &[
            ("LoadBalancerId", &id),
            ("ListenerPort", "8080"),
            (
                "RuleList",
                &format!(r#"[{{"RuleName":"r","Url":"/a","VServerGroupId":"{gid}"}}]"#),
            ),
        ],
    )
    .await;
    t.ok(
        "StartLoadBalancerListener",
        &[("LoadBalancerId", &id), ("ListenerPort", "80")],
    )
    .await;

    // Round trip: the export applies unchanged with nothing to do.
    let exported = cli.export().await;
    assert!(
        exported.contains("[[LoadBalancers.Listeners]]") && exported.contains("Rules"),
        "{exported}"
    );
    let file = t.dir.join("exported.toml");
    std::fs::write(&file, &exported).unwrap();
    let (ok, lines, err) = cli.apply(&file, false).await;
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].ends_with("changed 0 resources"), "{lines:?}");

    // A changed file: plan first (nothing changes), then apply.
    let before = state(&mut t).await;
    let edited = exported.replace("Scheduler = \"wrr\"", "Scheduler = \"rr\"")
        + r#"
[[LoadBalancers]]
LoadBalancerId = "lb-file"
Address = "10.66.0.200"
BackendServers = [ { ServerId = "10.66.1.9" } ]

[[LoadBalancers.Listeners]]
ListenerProtocol = "udp"
ListenerPort = 53
BackendServerPort = 53
"#;
    std::fs::write(&file, &edited).unwrap();
    let (ok, plan, err) = cli.apply(&file, true).await;
    assert!(ok, "{err}");
    let has = |needle: &str| plan.iter().any(|l| l.contains(needle));
    assert!(has("+ load balancer lb-file"), "{plan:?}");
    assert!(has("+ listener lb-file udp:53"), "{plan:?}");
    assert!(
        has(&format!(
            "~ listener {id} tcp:80: Scheduler: \"wrr\" → \"rr\""
        )),
        "{plan:?}"
    );
    assert!(
        plan.last().unwrap().ends_with("would change 4 resources"),
        "{plan:?}"
    );
    assert_eq!(state(&mut t).await, before, "--dry-run changes nothing");
    let (ok, applied, err) = cli.apply(&file, false).await;
    assert!(ok, "{err}");
    assert_eq!(applied[..applied.len() - 1], plan[..plan.len() - 1]);
    t.settle();
    let l = t
        .ok(
            "DescribeLoadBalancerTCPListenerAttribute",
            &[("LoadBalancerId", &id), ("ListenerPort", "80")],
        )
        .await;
    assert_eq!(l["Scheduler"], "rr");
    let u = t
        .ok(
            "DescribeLoadBalancerUDPListenerAttribute",
            &[("LoadBalancerId", "lb-file"), ("ListenerPort", "53")],
        )
        .await;
    assert_eq!(u["Status"], "running");
    // The API's own metadata of the kept instance survives a file apply.
    let a = t
        .ok("DescribeLoadBalancerAttribute", &[("LoadBalancerId", &id)])
        .await;
    assert_eq!(a["LoadBalancerName"], "web");
    // Exporting again yields a file that applies with no changes.
    std::fs::write(&file, cli.export().await).unwrap();
    let (ok, lines, _) = cli.apply(&file, false).await;
    assert!(ok && lines[0].ends_with("changed 0 resources"), "{lines:?}");

    // Removing resources from the file removes them.
    let without = edited
        .split("\n[[LoadBalancers]]\nLoadBalancerId = \"lb-file\"")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&file, &without).unwrap();
    let (ok, lines, err) = cli.apply(&file, false).await;
    assert!(ok, "{err}");
    assert!(
        lines.iter().any(|l| l == "- load balancer lb-file"),
        "{lines:?}"
    );
    t.err(
        "DescribeLoadBalancerAttribute",
        &[("LoadBalancerId", "lb-file")],
        "InvalidLoadBalancerId.NotFound",
        404,
    )
    .await;

    // Bad files change nothing: a located validation error, and a certificate the store lacks.
    let before = state(&mut t).await;
    let bad = without.replace("Scheduler = \"rr\"", "Scheduler = \"fastest\"");
    std::fs::write(&file, &bad).unwrap();
    let (ok, _, err) = cli.apply(&file, false).await;
    assert!(!ok);
    let line = bad.lines().position(|l| l.contains("fastest")).unwrap() + 1;
    assert!(
        err.contains(&format!("{}:{line}:", file.display())),
        "{err}"
    );
    assert!(err.contains("Scheduler"), "{err}");
    let https = format!(
        "{without}\n[[LoadBalancers.Listeners]]\nListenerProtocol = \"https\"\nListenerPort = 443\nBackendServerPort = 80\nStickySession = \"off\"\nHealthCheck = \"off\"\nServerCertificateId = \"cert-none\"\n"
    );
    std::fs::write(&file, &https).unwrap();
    let (ok, _, err) = cli.apply(&file, true).await;
    assert!(!ok);
    assert!(err.contains("ServerCertificateId.NotFound"), "{err}");
    assert_eq!(state(&mut t).await, before);
}
