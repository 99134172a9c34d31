//! `cargo xtask setup`: everything a fresh Debian machine needs to build, test and demo slb.
//! Each step checks first and says what it installs, so a second run prints nothing.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use xtask::cmd;

/// Debian packages the build, the tests and the demo use: `ip`, `ethtool` (veth offloads),
/// `nft`, `nc` (the demo's client), `tcpdump`, `bpftool` (inspecting loaded programs and maps),
/// `curl` (L7), OpenSSL headers for the agent's certificate handling and the `openssl` CLI the
/// tests make certificates with, Python for the Alibaba Cloud SDK compatibility tests (and the
/// TLS client of `cargo xtask bench l7`), `haproxy`, the peer `cargo xtask bench health` compares
/// the health checker with and `bench l7` the HTTP listeners with, `nginx` (the other peer of
/// `bench l7` and its backend) and `wrk` (its load generator).
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "nftables",
    "netcat-openbsd",
    "tcpdump",
    "bpftool",
    "curl",
    "pkg-config",
    "libssl-dev",
    "openssl",
    "python3",
    "python3-venv",
    "haproxy",
    "nginx",
    "wrk",
];

/// The Alibaba Cloud SDKs the compatibility tests drive the API with (tests/sdk/*.py), pinned.
const SDKS: &[&str] = &[
    "alibabacloud-slb20140515==3.3.31",
    "alibabacloud-tea-openapi==0.4.6",
    "aliyun-python-sdk-slb==3.3.22",
    "aliyun-python-sdk-core==2.16.1",
];

pub fn run() -> Result<()> {
    nightly_rust_src().context("installing nightly rust-src")?;
    llvm_tools().context("installing llvm-tools")?;
    bpf_linker().context("installing bpf-linker")?;
    debian_packages().context("installing Debian packages")?;
    bpffs().context("mounting bpffs")?;
    python_sdks().context("installing the Alibaba Cloud Python SDKs")?;
    // RLIMIT_MEMLOCK needs no raising: since Linux 5.11 BPF memory is charged to the memory
    // cgroup instead.
    Ok(())
}

fn say(what: &str) {
    println!("setup: {what}");
}

/// slb-ebpf is built with `-Z build-std=core`, which needs the nightly standard library source.
fn nightly_rust_src() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()
        .context("running rustup (is it installed?)")?;
    if !listed.status.success() {
        say("installing the nightly toolchain with rust-src (slb-ebpf is built with it)");
        return cmd::run_visible(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    say("installing rust-src for the nightly toolchain (slb-ebpf needs -Z build-std=core)");
    cmd::run_visible(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// The profile-guided release build (`pgo`) merges its profile with the `llvm-profdata` of
/// the toolchain that builds the agent.
fn llvm_tools() -> Result<()> {
    // In the workspace, so that rustup answers for the toolchain cargo builds with.
    let root = crate::Workspace::locate()?.root;
    let listed = cmd::output(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .current_dir(&root),
    )?;
    if listed.lines().any(|l| l.starts_with("llvm-tools")) {
        return Ok(());
    }
    say("installing llvm-tools (llvm-profdata, for the profile-guided build of the agent)");
    cmd::run_visible(
        Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .current_dir(&root),
    )
}

/// bpf-linker links the BPF object. Its default build wants a system LLVM, which Debian 12 does
/// not have in the right version, so it is built against the LLVM shared library that ships
/// inside the nightly toolchain (the same LLVM that produces the bitcode it links).
fn bpf_linker() -> Result<()> {
    // Also catches a bpf-linker whose LLVM went away with a toolchain update.
    if cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = cmd::output(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let (llvm, major) = find_llvm(&lib_dir)?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".cache/slb/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    // bpf-linker's build script links `<LLVM_PREFIX>/lib/libLLVM.so` and records that directory
    // as the binary's RUNPATH; at run time the binary then asks for the library's soname
    // (`libLLVM.so.22.1-rust-...`) there. Both names must exist in the prefix.
    let soname = llvm
        .file_name()
        .context("LLVM library path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = prefix_lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    say(&format!(
        "installing bpf-linker built against the nightly toolchain's LLVM {major} ({})",
        llvm.display()
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd::run_visible(
        Command::new(cargo)
            .args(["install", "bpf-linker", "--no-default-features", "--force"])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails (is ~/.cargo/bin on PATH?)"
        );
    }
    Ok(())
}

/// Finds `libLLVM.so.<major>.<rest>` in the toolchain's lib directory; returns it and `<major>`.
fn find_llvm(lib_dir: &Path) -> Result<(PathBuf, u32)> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib_dir.display()))?;
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix("libLLVM.so.")) else {
            continue;
        };
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if let Some(major) = major {
            found.push((entry.path(), major));
        }
    }
    // One is expected; if a toolchain ever ships several, the newest is the one rustc uses.
    found.sort_by_key(|(_, major)| *major);
    found
        .pop()
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))
}

fn debian_packages() -> Result<()> {
    if !cmd::succeeds(Command::new("dpkg-query").arg("--version")) {
        bail!(
            "not a Debian-like system (no dpkg-query); install the equivalents of: {}",
            PACKAGES.join(" ")
        );
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("apt-get update (missing: {})", missing.join(" ")));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    // bpftool is its own package only on some releases (Debian 12 has it); elsewhere it lives
    // in linux-tools, which this does not try to guess.
    let (available, unavailable): (Vec<&str>, Vec<&str>) = missing
        .into_iter()
        .partition(|p| cmd::succeeds(Command::new("apt-cache").args(["show", p])));
    for p in &unavailable {
        say(&format!("no Debian package `{p}` here; skipping it"));
    }
    if available.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        available.join(" ")
    ));
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&available)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// A virtualenv at `~/.cache/slb/venv` with [`SDKS`] (tests/tests/sdk.rs runs them).
fn python_sdks() -> Result<()> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/slb/venv");
    let python = venv.join("bin/python");
    let present = cmd::succeeds(
        Command::new(&python).args(["-c", "import alibabacloud_slb20140515, aliyunsdkslb"]),
    );
    if present {
        return Ok(());
    }
    say(&format!(
        "creating {} with the Alibaba Cloud SDKs: {}",
        venv.display(),
        SDKS.join(" ")
    ));
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(SDKS),
    )
}

/// The agent pins its maps under /sys/fs/bpf, which needs a bpf filesystem there.
fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    say("mounting bpffs at /sys/fs/bpf");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
