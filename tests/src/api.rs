//! An in-process API server on loopback with a fresh state store, for the API tests. The data
//! plane is played by [`TestApi::settle`]: it acknowledges every published generation, which
//! completes listener transitions exactly as the agent's programming loop does.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::Value;
use slb::api::{
    client::Client,
    http,
    sign::{AccessKeys, Verifier},
    state::State,
    store::Store,
    Api, Published, Settings,
};
use tokio::sync::watch;

pub const KEY_ID: &str = "testid";
pub const SECRET: &str = "testsecret";
pub const REGION: &str = "cn-test";

pub struct TestApi {
    pub client: Client,
    pub api: Arc<Api>,
    pub dir: PathBuf,
    published: watch::Receiver<Published>,
    applied: watch::Sender<u64>,
    server: tokio::task::JoinHandle<()>,
}

pub fn settings() -> Settings {
    Settings {
        region_id: REGION.to_string(),
        zone_ids: vec!["cn-test-a".to_string(), "cn-test-b".to_string()],
        vip_pool: vec![
            "10.66.0.0/24".parse().expect("CIDR"),
            "fd66::/120".parse().expect("CIDR"),
        ],
    }
}

impl TestApi {
    /// A server on a fresh store in a new temporary directory named after `name`.
    pub async fn start(name: &str) -> anyhow::Result<TestApi> {
        let dir = std::env::temp_dir().join(format!("slb-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self::start_in(dir).await
    }

    /// A server on the store in `dir` (kept if it exists: a restart).
    pub async fn start_in(dir: PathBuf) -> anyhow::Result<TestApi> {
        let store = Store::open(&dir.join("state.redb"))?;
        let state = State::open(store, None)?;
        let (applied, applied_rx) = watch::channel(0u64);
        let (api, published) = Api::new(
            state,
            settings(),
            Default::default(),
            applied_rx,
            // No checks run here: every member reads `unavailable`.
            slb::health::Engine::new().status(),
            Default::default(),
        );
        let api = Arc::new(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let verifier = Arc::new(Verifier::new(AccessKeys::from_pairs([(
            KEY_ID.to_string(),
            SECRET.to_string(),
        )])));
        let server = tokio::spawn(http::serve(api.clone(), verifier, listener, None));
        Ok(TestApi {
            client: Client {
                addr,
                key_id: KEY_ID.to_string(),
                secret: SECRET.to_string(),
                tls: None,
            },
            api,
            dir,
            published,
            applied,
            server,
        })
    }

    /// The data plane has applied everything published so far.
    pub fn settle(&mut self) {
        let g = self.published.borrow_and_update().generation;
        self.applied.send_replace(g);
    }

    /// Calls and lets the data plane apply the result.
    pub async fn call(&mut self, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let r = self.call_held(action, params).await;
        self.settle();
        r
    }

    /// Calls without letting the data plane apply it (to observe transitions).
    pub async fn call_held(&mut self, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut all = vec![("RegionId", REGION)];
        all.extend_from_slice(params);
        match self.client.call(action, &all).await {
            Ok(r) => r,
            Err(e) => panic!("{action}: {e}"),
        }
    }

    /// Calls and expects success.
    pub async fn ok(&mut self, action: &str, params: &[(&str, &str)]) -> Value {
        let (status, body) = self.call(action, params).await;
        assert_eq!(status, 200, "{action} {params:?}: {body}");
        body
    }

    /// Calls and expects the error `code` with HTTP `status`.
    pub async fn err(
        &mut self,
        action: &str,
        params: &[(&str, &str)],
        code: &str,
        status: u16,
    ) -> Value {
        let (s, body) = self.call(action, params).await;
        assert_eq!(
            (s, body["Code"].as_str()),
            (status, Some(code)),
            "{action} {params:?}: {body}"
        );
        assert!(
            body["RequestId"].is_string() && body["HostId"].is_string(),
            "{body}"
        );
        body
    }

    /// Stops the server and returns the store directory (for a restart).
    pub async fn stop(self) -> PathBuf {
        self.server.abort();
        let _ = self.server.await;
        drop(self.api);
        // Connection tasks hold the API until their (one-shot) connections close.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.dir
    }
}

/// The `slb` binary of this build, next to the test executables' `deps` directory.
pub fn slb_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("slb"))
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: run the suite with `cargo xtask test`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `openssl ARGS` in `dir` (test certificates); panics if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A running `slb serve`, killed when dropped.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `slb serve --config CONFIG` in the network namespace `ns` and waits until it is ready.
pub fn start_agent_in(ns: &str, config: &Path) -> anyhow::Result<Running> {
    let (child, _) = start(&mut xtask::lab::netns_command(ns, slb_binary()?), config)?;
    Ok(Running(child))
}

/// An agent a test runs in a lab: a fresh directory, a pin path, and the `[Agent]` section that
/// attaches to every LB interface of the lab. Dropping it unloads the pins and removes the
/// directory, so the [`Running`] agent must be dropped first (declare it after).
pub struct LabAgent {
    pub dir: PathBuf,
    pub pin: String,
    lb_ns: String,
    agent_section: String,
}

impl LabAgent {
    pub fn new(lab: &xtask::lab::Lab, name: &str) -> anyhow::Result<LabAgent> {
        let dir = std::env::temp_dir().join(format!("slb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let pin = format!("/sys/fs/bpf/slb-test-{name}-{}", std::process::id());
        let ifaces: Vec<String> = lab.lb_ifaces().iter().map(|i| format!("\"{i}\"")).collect();
        let agent_section = format!(
            "[Agent]\nInterfaces = [{}]\nPinPath = \"{pin}\"\nFlowTableSize = 65536\n",
            ifaces.join(", ")
        );
        Ok(LabAgent {
            dir,
            pin,
            lb_ns: lab.lb_ns().to_string(),
            agent_section,
        })
    }

    /// Writes a 0600 access key file with one key into the directory.
    pub fn keys(&self, id: &str, secret: &str) -> anyhow::Result<PathBuf> {
        let keys = self.dir.join("keys.toml");
        std::fs::write(
            &keys,
            format!("[[AccessKeys]]\nAccessKeyId = \"{id}\"\nAccessKeySecret = \"{secret}\"\n"),
        )?;
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(keys)
    }

    /// `GET /metrics` from the agent's API on 127.0.0.1:`port` in the lab's LB namespace: the
    /// whole response, head and text.
    pub fn metrics(&self, port: u16) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        xtask::lab::in_netns(&self.lb_ns, move || -> anyhow::Result<String> {
            let mut s = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })?
    }

    /// Writes the `[Agent]` section followed by `rest` (more `[Agent]` keys may come first) as
    /// the configuration and starts `slb serve` with it in the lab's LB namespace.
    pub fn start(&self, rest: &str) -> anyhow::Result<Running> {
        let config = self.dir.join("slb.toml");
        std::fs::write(&config, format!("{}{rest}", self.agent_section))?;
        start_agent_in(&self.lb_ns, &config)
    }
}

impl Drop for LabAgent {
    fn drop(&mut self) {
        let _ = slb::dataplane::loader::unload(Path::new(&self.pin));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `slb serve --config CONFIG` and waits for its `slb ready` line, which it returns.
pub fn start_agent(config: &Path) -> anyhow::Result<(std::process::Child, String)> {
    start(&mut std::process::Command::new(slb_binary()?), config)
}

fn start(
    command: &mut std::process::Command,
    config: &Path,
) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead as _;
    let mut child = command
        .args(["serve", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("agent stdout"))?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("slb ready") {
        let _ = child.kill();
        anyhow::bail!("agent did not start: {line:?}");
    }
    Ok((child, line))
}
