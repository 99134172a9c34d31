//! `cargo xtask <command>`: developer commands for slb.
//!
//! # Layout
//! * `setup`: installs what building and testing need (idempotent).
//! * `demo`: `build-and-load`, the agent in a network-namespace lab, or on a real interface.
//! * `bench`: `bench l4`, the L4 benchmarks; `bench api`; `bench health`; `bench l7` (in
//!   `bench_l7`).
//! * `pgo`: the agent's profile-guided release build, which every command that runs it uses.
//! * this file: the command line, `test` and `replay`.
mod agent;
mod bench;
mod bench_l7;
mod bpfsys;
mod demo;
mod floor;
mod livegen;
mod pgo;
mod setup;

use std::{
    ffi::OsString,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use xtask::cmd;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer commands for slb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain (nightly rust-src, bpf-linker), the Debian packages the tests
    /// and the demo use, and mount bpffs. Does nothing when everything is there.
    Setup,
    /// Run setup, then rustfmt, clippy and every test of the workspace (including the
    /// privileged ones), and print a summary.
    Test,
    /// Build slb and run it. Without options: bring up the demo lab (network namespaces
    /// slb-client, slb-lb, slb-b1..3), load the agent with xtask/demo/slb.toml, and keep it
    /// running until Ctrl-C, which tears everything down.
    BuildAndLoad {
        /// Serve on this real interface instead of the demo lab.
        #[arg(long, requires = "config")]
        iface: Option<String>,
        /// Configuration file to serve (with --iface).
        #[arg(long, requires = "iface")]
        config: Option<PathBuf>,
        /// XDP attach mode (with --iface).
        #[arg(long, requires = "iface")]
        xdp_mode: Option<XdpMode>,
    },
    /// Run a benchmark suite and write `bench/results/<suite>.json`. `l4`: ns/packet of the
    /// XDP program (BPF_PROG_TEST_RUN), Maglev build times, and XDP vs nftables DNAT packet
    /// rate and CPU in a namespace lab. `api`: req/s and p50/p99 of Describe/Set/Create at
    /// 1/16/64 clients with 1,000 listeners and 10,000 backends stored, acknowledged change →
    /// live in the maps, store size. `health`: CPU and spread of check times of the health
    /// checker with 10,000 backends every 2 s, next to HAProxy checking the same backends.
    /// `l7`: the HTTP and HTTPS listeners next to nginx and HAProxy as reverse proxies of the
    /// same backend: req/s, p50/p99 and latency added (wrk, keep-alive and new connections),
    /// CPU per request, RSS of 10,000 idle connections, full TLS handshakes per second.
    Bench { suite: BenchSuite },
    /// Build slb and run `slb replay <ARGS>`, e.g.
    /// `--config FILE --pcap-in IN --pcap-out OUT [--json]`.
    #[command(disable_help_flag = true)]
    Replay {
        /// Passed to `slb replay` unchanged (so `--help` shows its help).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchSuite {
    L4,
    Api,
    Health,
    L7,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpMode {
    Native,
    Generic,
}

impl XdpMode {
    fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` gives the whole context chain on one line, without the backtrace that
            // anyhow's Debug output adds when RUST_BACKTRACE is set.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let ws = Workspace::locate()?;
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test => test(&ws),
        Cmd::BuildAndLoad {
            iface: Some(iface),
            config: Some(config),
            xdp_mode,
        } => {
            setup::run()?;
            let slb = ws.build_slb()?;
            demo::serve_on_iface(&slb, &config, &iface, xdp_mode.map(XdpMode::as_str))
        }
        // clap's `requires` guarantees --iface and --config come together.
        Cmd::BuildAndLoad { .. } => {
            setup::run()?;
            let slb = ws.build_slb()?;
            demo::run(&ws, &slb)
        }
        Cmd::Bench {
            suite: BenchSuite::L4,
        } => bench::l4(&ws),
        Cmd::Bench {
            suite: BenchSuite::Api,
        } => bench::api(&ws),
        Cmd::Bench {
            suite: BenchSuite::Health,
        } => bench::health(&ws),
        Cmd::Bench {
            suite: BenchSuite::L7,
        } => bench_l7::l7(&ws),
        Cmd::Replay { args } => {
            setup::run()?;
            let slb = ws.build_slb()?;
            let mut replay = Command::new(&slb);
            replay.arg("replay").args(args);
            let status = replay
                .status()
                .with_context(|| format!("running `{}`", cmd::display(&replay)))?;
            exit_like(status)
        }
    }
}

/// The workspace this xtask belongs to.
struct Workspace {
    root: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Workspace> {
        // xtask is always run from its own source tree (`cargo xtask` is a cargo alias).
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        Ok(Workspace { root })
    }

    /// `cargo` with the workspace root as working directory. `$CARGO` is the cargo that runs
    /// us, so nested builds use the same toolchain.
    fn cargo(&self) -> Command {
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo.current_dir(&self.root);
        cargo
    }

    /// Builds the agent for release, profile-guided ([`pgo`]), and returns the path of the
    /// `slb` binary.
    fn build_slb(&self) -> Result<PathBuf> {
        pgo::build(self)
    }

    /// Asks cargo, because CARGO_TARGET_DIR or a config file may move it from `target/`.
    fn target_dir(&self) -> Result<PathBuf> {
        let json =
            cmd::output(
                self.cargo()
                    .args(["metadata", "--format-version", "1", "--no-deps"]),
            )?;
        let meta: serde_json::Value =
            serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
        let dir = meta["target_directory"]
            .as_str()
            .context("`cargo metadata` has no target_directory")?;
        Ok(PathBuf::from(dir))
    }
}

/// Set by Ctrl-C. The handler is installed on first use and once per process (ctrlc allows no
/// more): the profile training of a build and the demo or bench that follows it share it.
/// Ctrl-C then ends the current step and everything is torn down on the way out.
fn interrupted() -> Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(Arc::clone(flag));
    }
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    ctrlc::set_handler(move || set.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(Arc::clone(FLAG.get_or_init(|| flag)))
}

/// A directory xtask owns (bpffs pins, the demo API's key and store, a bench's scratch files):
/// removed before use, at the end, and when dropped on the way out of an error or Ctrl-C.
pub(crate) struct OwnedDir(pub(crate) PathBuf);

impl OwnedDir {
    pub(crate) fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.0.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        // Whoever cares about a failure has called `remove` already.
        let _ = self.remove();
    }
}

/// `cargo xtask test`: setup, then every check; all checks run even if one fails, so a single
/// run shows everything that needs fixing.
fn test(ws: &Workspace) -> Result<()> {
    setup::run().context("setup failed; nothing was tested")?;
    let steps: [(&str, &[&str]); 3] = [
        ("fmt", &["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            &["clippy", "--all-targets", "--", "-D", "warnings"],
        ),
        // slb-ebpf only builds for the BPF target (slb-userspace's build script builds it).
        ("test", &["test", "--workspace", "--exclude", "slb-ebpf"]),
    ];
    let mut results = Vec::new();
    for (name, args) in steps {
        println!("==> cargo {}", args.join(" "));
        let started = Instant::now();
        let result = cmd::run_visible(ws.cargo().args(args));
        if let Err(e) = &result {
            eprintln!("{e:#}");
        }
        results.push((name, result.is_ok(), started.elapsed()));
    }
    println!("\nxtask test summary:");
    for (name, ok, took) in &results {
        let verdict = if *ok { "ok" } else { "FAILED" };
        println!("  {name:<8}{verdict:<8}{:>7.1}s", took.as_secs_f64());
    }
    let failed: Vec<&str> = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    println!("all checks passed");
    Ok(())
}

/// Ends xtask with the same exit status as a child it ran in the foreground (128 + signal if
/// the child was killed, as shells report it).
fn exit_like(status: ExitStatus) -> ! {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    std::process::exit(code)
}
