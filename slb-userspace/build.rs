//! Builds the BPF programs of `slb-ebpf` (the XDP program and the proxy's worker picker) for
//! `bpfel-unknown-none` with the nightly toolchain and `bpf-linker` that `cargo xtask setup`
//! installs, so the agent embeds the objects it loads.
use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("workspace root")?
        .to_path_buf();
    for dir in ["slb-ebpf/src", "slb-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("slb-ebpf/Cargo.toml").display()
    );
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "slb-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's compiler settings must not leak into the BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
    );
    let status = cmd
        .status()
        .context("running the nightly cargo for slb-ebpf (run `cargo xtask setup`)")?;
    if !status.success() {
        bail!(
            "building slb-ebpf failed ({status}); `cargo xtask setup` installs the BPF toolchain"
        );
    }
    let objects = target_dir.join("bpfel-unknown-none/release");
    for (var, bin) in [
        ("SLB_EBPF_OBJECT", "slb-ebpf"),
        ("SLB_WORKERS_OBJECT", "slb-workers"),
    ] {
        println!("cargo:rustc-env={var}={}", objects.join(bin).display());
    }
    Ok(())
}
