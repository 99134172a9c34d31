//! TLS for the management API (`[Api] TlsCertificate` / `TlsPrivateKey`): the real agent
//! serves its API over TLS only; `slb call` / `slb export` with `--tls-ca` verify the server's
//! certificate (including that it names the address called); a plain-HTTP client, an untrusted
//! CA and a mismatched key are refused.
use std::path::Path;
use std::process::{Command, Output};

use tests::api::{openssl, slb_binary, start_agent};

const PORT: u16 = 18_669;

/// A CA (`NAME-ca.pem`) and a server certificate it signed for IP 127.0.0.1.
fn pki(dir: &Path, name: &str) {
    let ca = format!("{name}-ca.pem");
    let ca_key = format!("{name}-ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=slb api",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// `slb COMMAND… --endpoint … --keys-file … [--tls-ca CA] PARAMS…` (`call` takes everything
/// after its own options as parameters).
fn slb(dir: &Path, command: &[&str], ca: Option<&Path>, params: &[&str]) -> Output {
    let mut cmd = Command::new(slb_binary().unwrap());
    cmd.args(command)
        .args(["--endpoint", &format!("127.0.0.1:{PORT}"), "--keys-file"])
        .arg(dir.join("keys.toml"));
    if let Some(ca) = ca {
        cmd.arg("--tls-ca").arg(ca);
    }
    cmd.args(params).output().unwrap()
}

#[test]
fn api_over_tls() {
    if !tests::is_root() {
        eprintln!("skipped: the agent loads its XDP program, which needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("slb-api-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    pki(&dir, "good");
    pki(&dir, "other");
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        "[[AccessKeys]]\nAccessKeyId = \"k\"\nAccessKeySecret = \"s\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pin = format!("/sys/fs/bpf/slb-test-tls-{}", std::process::id());
    let config = |key: &str| {
        let path = dir.join(format!("slb-{key}.toml"));
        std::fs::write(
            &path,
            format!(
                "[Agent]\nPinPath = \"{pin}\"\nFlowTableSize = 4096\n\n[Api]\nListen = \"127.0.0.1:{PORT}\"\nKeysFile = \"{}\"\nStatePath = \"{}\"\nVipPool = [\"10.69.0.0/24\"]\nTlsCertificate = \"{}\"\nTlsPrivateKey = \"{}\"\n",
                keys.display(),
                dir.join("state.redb").display(),
                dir.join("good.pem").display(),
                dir.join(key).display(),
            ),
        )
        .unwrap();
        path
    };

    // A key that is not the certificate's: the agent refuses to start and names the file.
    let out = Command::new(slb_binary().unwrap())
        .args(["serve", "--config"])
        .arg(config("other.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("other.key"), "{err}");

    let (mut agent, line) = start_agent(&config("good.key")).unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(
            line.starts_with(&format!("slb ready: API on https://127.0.0.1:{PORT}")),
            "{line}"
        );
        let good = dir.join("good-ca.pem");
        let good = Some(good.as_path());
        let out = slb(
            &dir,
            &["call", "CreateLoadBalancer"],
            good,
            &["--RegionId", "local", "--LoadBalancerName", "tls"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"Address\": \"10.69.0.1\""));
        let out = slb(&dir, &["export"], good, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("LoadBalancerName = \"tls\""));
        // Plain HTTP to the TLS port gets no API response.
        let out = slb(
            &dir,
            &["call", "DescribeRegions"],
            None,
            &["--RegionId", "local"],
        );
        assert!(!out.status.success());
        // A CA that did not sign the server's certificate: the handshake fails, nothing is sent.
        let other = dir.join("other-ca.pem");
        let out = slb(
            &dir,
            &["call", "CreateLoadBalancer"],
            Some(&other),
            &["--RegionId", "local"],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TLS handshake"), "{err}");
        let out = slb(
            &dir,
            &["call", "DescribeLoadBalancers"],
            good,
            &["--RegionId", "local"],
        );
        let listed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(listed.matches("\"LoadBalancerId\"").count(), 1, "{listed}");
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = Command::new(slb_binary().unwrap())
        .args(["unload", "--pin-path", &pin])
        .status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
