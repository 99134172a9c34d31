//! The agent's release build, profile-guided: built once with instrumentation, run through
//! the proxy's loads of `bench l7` (every wrk variant, a few seconds each) and the API's of
//! `slb bench-api`, then built again with the profile those runs wrote. LLVM then lays out and
//! inlines the request path by how it actually runs; on the 2-core bench machine the HTTP
//! keep-alive case served about 4 % more requests per CPU-second than the plain release build.
//!
//! Under `<target>/pgo/`: `generate/` and `use/` (cargo target directories: their compiler
//! flags differ, so each keeps its own build cache), `raw/` (what the instrumented runs write,
//! until it is merged), `slb.profdata`, and `slb`, the agent built. The training runs again only when the
//! instrumented binary changed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use xtask::cmd;

use crate::{bench_l7, OwnedDir, Workspace};

pub fn build(ws: &Workspace) -> Result<PathBuf> {
    let dir = ws.target_dir()?.join("pgo");
    let rustc = Rustc::of(ws)?;
    let raw = dir.join("raw");
    let profile = dir.join("slb.profdata");
    say("1/3: the agent with instrumentation");
    let instrumented = rustc.build(
        ws,
        &dir.join("generate"),
        &format!("-Cprofile-generate={}", raw.display()),
    )?;
    if modified(&profile).ok() > modified(&instrumented).ok() {
        say("2/3: the profile is newer than the instrumented agent; kept");
    } else {
        say("2/3: training: the instrumented agent under bench l7's loads and slb bench-api");
        // Fresh for each training, and gone once merged.
        let raw_dir = OwnedDir(raw.clone());
        raw_dir.remove()?;
        bench_l7::train(&instrumented)?;
        // Its report is not wanted, only the profile of the API's work.
        cmd::output(Command::new(&instrumented).args(["bench-api", "--json"]))?;
        let written = std::fs::read_dir(&raw)
            .with_context(|| format!("reading {}", raw.display()))?
            .count();
        if written == 0 {
            bail!(
                "the instrumented agent wrote no profile into {}",
                raw.display()
            );
        }
        // Written aside and renamed: a merge cut short leaves no profile that looks current.
        let merged = dir.join("slb.profdata.new");
        cmd::run(
            Command::new(rustc.profdata())
                .arg("merge")
                .arg("-o")
                .arg(&merged)
                .arg(&raw),
        )
        .context("merging the profile (`cargo xtask setup` installs llvm-tools)")?;
        std::fs::rename(&merged, &profile)
            .with_context(|| format!("renaming {} to {}", merged.display(), profile.display()))?;
    }
    say("3/3: the agent optimised with the profile");
    let built = rustc.build(
        ws,
        &dir.join("use"),
        &format!("-Cprofile-use={}", profile.display()),
    )?;
    // Copied to a short path that the README can name; renamed into place, because a running
    // agent's binary cannot be written over.
    let slb = dir.join("slb");
    let copy = dir.join("slb.new");
    std::fs::copy(&built, &copy).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&copy, &slb).with_context(|| format!("renaming {}", copy.display()))?;
    Ok(slb)
}

fn say(what: &str) {
    println!("==> profile-guided build {what}");
}

fn modified(path: &Path) -> Result<std::time::SystemTime> {
    Ok(std::fs::metadata(path)?.modified()?)
}

/// The toolchain that builds the agent.
struct Rustc {
    sysroot: PathBuf,
    host: String,
}

impl Rustc {
    fn of(ws: &Workspace) -> Result<Rustc> {
        // Run in the workspace, so that rustup picks the toolchain cargo builds with.
        let rustc = |arg: &str| cmd::output(Command::new("rustc").arg(arg).current_dir(&ws.root));
        let sysroot = PathBuf::from(rustc("--print=sysroot")?.trim());
        let version = rustc("-vV")?;
        let host = version
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .context("`rustc -vV` names no host")?
            .to_string();
        Ok(Rustc { sysroot, host })
    }

    /// The `llvm-profdata` of rustc's own LLVM: the profile format is that LLVM's.
    fn profdata(&self) -> PathBuf {
        self.sysroot
            .join("lib/rustlib")
            .join(&self.host)
            .join("bin/llvm-profdata")
    }

    /// `cargo build --release` of the agent into `target_dir` with `flag` for rustc. With an
    /// explicit `--target` the flag reaches only the agent's code, not build scripts or proc
    /// macros.
    fn build(&self, ws: &Workspace, target_dir: &Path, flag: &str) -> Result<PathBuf> {
        cmd::run_visible(
            ws.cargo()
                .args(["build", "--release", "-p", "slb-userspace", "--target"])
                .arg(&self.host)
                .arg("--target-dir")
                .arg(target_dir)
                .env("CARGO_ENCODED_RUSTFLAGS", flag),
        )?;
        Ok(target_dir.join(&self.host).join("release/slb"))
    }
}
