//! The `slb` operator commands as a shell user runs them.
use std::{os::unix::process::ExitStatusExt as _, path::PathBuf, process::Command};

use tests::api::slb_binary;

/// Piped into a reader that has already gone (`slb check-config … | head -0`), a command ends by
/// SIGPIPE like other Unix tools, without a panic on stderr.
#[test]
fn printing_into_a_closed_pipe_ends_quietly() -> anyhow::Result<()> {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xtask/demo/slb.toml");
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = Command::new(slb_binary()?)
        .arg("check-config")
        .arg(&config)
        .stdout(writer)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}
