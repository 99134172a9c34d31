//! Running external commands (`ip`, `ethtool`, `cargo`, ...) with useful errors.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// `prog arg1 arg2 ...`, for error messages and progress lines.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with captured output and returns its stdout; a failure carries the command line
/// and its stderr, because the typical failure (`ip` refusing an argument) is only explained there.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", display(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = if stderr.trim().is_empty() {
            String::from_utf8_lossy(&out.stdout)
        } else {
            stderr
        };
        bail!("`{}` failed ({}): {}", display(cmd), out.status, why.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`] for commands whose stdout is of no interest.
pub fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

/// Runs `cmd` with the terminal attached (builds, test runs) and fails if it does.
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Whether `cmd` can be started and exits successfully; output is discarded. For probes such as
/// `bpf-linker --version`, where any failure just means "not usable yet".
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
