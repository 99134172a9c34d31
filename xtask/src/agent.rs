//! `slb serve` run by xtask in a lab's LB namespace (the demo and the benchmarks).
use std::{
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Stdio},
    sync::mpsc::{self, Receiver, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use xtask::{cmd, lab};

/// How long the agent gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent, running in the LB namespace; its stdout and stderr lines arrive on `lines`.
pub struct Agent {
    pub child: Child,
    pub lines: Receiver<String>,
}

impl Agent {
    /// Starts `slb serve --config <config>` in namespace `ns`. With `own_process_group`,
    /// Ctrl-C in the terminal reaches only xtask, which then stops the agent in order. `quiet`:
    /// warnings and errors only, no access log.
    pub fn start(
        slb: &Path,
        config: &Path,
        ns: &str,
        own_process_group: bool,
        quiet: bool,
    ) -> Result<Agent> {
        // Only the network namespace: the agent's pins under /sys/fs/bpf are the host's.
        let mut serve = lab::netns_command(ns, slb);
        if quiet {
            serve.env("RUST_LOG", "warn");
        }
        serve
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_process_group {
            serve.process_group(0);
        }
        let mut child = serve
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&serve)))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            relay_lines(out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            relay_lines(err, tx);
        }
        Ok(Agent { child, lines })
    }

    /// SIGTERM, then SIGKILL if it has not exited after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("agent pid")?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to the agent")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().context("killing the agent")?;
        self.child.wait().context("waiting for the agent")?;
        bail!(
            "the agent ignored SIGTERM for {} s and was killed",
            STOP_TIMEOUT.as_secs()
        )
    }
}

/// `slb unload --pin-path <pins>`, in the LB namespace where the programs are attached: the
/// agent leaves them running when it exits, by design.
pub fn unload(slb: &Path, ns: &str, pins: &Path) -> Result<()> {
    if !pins.exists() {
        return Ok(());
    }
    cmd::run(
        lab::netns_command(ns, slb)
            .arg("unload")
            .arg("--pin-path")
            .arg(pins),
    )
}

/// Sends each line `from` produces to `to`, on a thread of its own so that neither pipe fills.
fn relay_lines(from: impl Read + Send + 'static, to: Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                return;
            }
        }
    });
}
