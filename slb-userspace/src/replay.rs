//! Runs packets through the real XDP program with `BPF_PROG_TEST_RUN`, with maps programmed by
//! the agent's own sync code. The run happens in a private network namespace whose FIB is
//! fixed, so forwarded packets get deterministic MACs: veth `lb0` (02:00:00:00:00:01,
//! ifindex 2) routes everything to a gateway 02:00:00:00:00:02. A packet that arrives on `lb0`
//! and leaves by it is `XDP_TX`; one that arrives on `lo` is `XDP_REDIRECT`ed to `lb0`.
use std::{
    io::{Read, Write},
    path::PathBuf,
    process::Command,
};

use aya::programs::{ProgramError, TestRun, TestRunOptions};

use crate::dataplane::{
    image::Image,
    loader::{self, LoadOptions, Loaded},
    sync::Sync,
    DataplaneError,
};

pub const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("creating the replay network namespace: {source}")]
    Unshare { source: nix::Error },
    #[error("`{command}` failed: {detail}")]
    Setup { command: String, detail: String },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("running the program: {source}")]
    Run { source: ProgramError },
    #[error("{path}: {detail}")]
    Pcap { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a test packet enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// The LB's interface: forwarded packets leave by it again (`XDP_TX`).
    Lb,
    /// Loopback: forwarded packets go to `lb0` (`XDP_REDIRECT`).
    Lo,
}

pub struct Outcome {
    pub action: u32,
    /// The packet after the program (what would be transmitted).
    pub data: Vec<u8>,
}

pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

pub struct Harness {
    pub ebpf: aya::Ebpf,
    pub sync: Sync,
    lb_ifindex: u32,
}

fn run_cmd(args: &[&str]) -> Result<(), ReplayError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| ReplayError::Setup {
            command: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ReplayError::Setup {
            command: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Moves the calling thread into a fresh network namespace with the fixed FIB described in the
/// module docs. The namespace disappears with the thread.
fn enter_private_netns() -> Result<u32, ReplayError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|source| ReplayError::Unshare { source })?;
    // Children spawned from this thread inherit its namespace.
    for cmd in [
        "ip link set lo up",
        "ip link add lb0 type veth peer name lb0p",
        "ip link set lb0p up",
        "ip link set lb0 address 02:00:00:00:00:01",
        "ip link set lb0 up",
        "ip addr add 169.254.0.1/30 dev lb0",
        "ip route add default via 169.254.0.2 dev lb0",
        "ip neigh replace 169.254.0.2 lladdr 02:00:00:00:00:02 dev lb0 nud permanent",
        "ip -6 route add default via fe80::2 dev lb0 onlink",
        "ip -6 neigh replace fe80::2 lladdr 02:00:00:00:00:02 dev lb0 nud permanent",
    ] {
        run_cmd(&cmd.split(' ').collect::<Vec<_>>())?;
    }
    for (path, v) in [
        ("/proc/sys/net/ipv4/conf/all/forwarding", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ] {
        std::fs::write(path, v).map_err(|source| ReplayError::Io {
            path: path.into(),
            source,
        })?;
    }
    let c = std::ffi::CString::new("lb0").map_err(|e| ReplayError::Setup {
        command: "if_nametoindex".into(),
        detail: e.to_string(),
    })?;
    // SAFETY: plain libc call with a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    Ok(idx)
}

impl Harness {
    /// Loads a private copy of the program (no pins) and programs `image` into it. The calling
    /// thread moves into a private network namespace for good.
    pub fn new(image: &Image, flow_entries: u32) -> Result<Self, ReplayError> {
        let lb_ifindex = enter_private_netns()?;
        let Loaded { ebpf, maps } = loader::load(&LoadOptions {
            pin_dir: None,
            flow_entries,
            persist_entries: flow_entries,
        })?;
        let mut sync = Sync::adopt(maps)?;
        sync.apply(image)?;
        Ok(Harness {
            ebpf,
            sync,
            lb_ifindex,
        })
    }

    pub fn run(&mut self, packet: &[u8], ingress: Ingress) -> Result<Outcome, ReplayError> {
        Ok(self.run_repeat(packet, ingress, 1)?.0)
    }

    /// Like [`Harness::run`] with the kernel running the program `repeat` times in one call;
    /// also returns the kernel's timing, the average per run (it includes the kernel's timer
    /// reads, once per call). The kernel hands every repeat the same buffer, so runs after the
    /// first see the packet as the previous run left it (translated, for a forwarded packet):
    /// the outcome is that of the last run.
    pub fn run_repeat(
        &mut self,
        packet: &[u8],
        ingress: Ingress,
        repeat: u32,
    ) -> Result<(Outcome, std::time::Duration), ReplayError> {
        let prog = loader::program(&mut self.ebpf, slb_common::PROGRAM_NAME)?;
        let mut out = vec![0u8; packet.len() + 256];
        let ifindex = match ingress {
            Ingress::Lb => self.lb_ifindex,
            Ingress::Lo => 1,
        };
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, packet.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let r = prog
            .test_run(opts)
            .map_err(|source| ReplayError::Run { source })?;
        out.truncate(r.data_size_out as usize);
        Ok((
            Outcome {
                action: r.return_value,
                data: out,
            },
            r.duration,
        ))
    }
}

/// Classic pcap (microsecond, Ethernet) reading and writing.
pub mod pcap {
    use super::*;

    const MAGIC_US: u32 = 0xa1b2_c3d4;
    const MAGIC_NS: u32 = 0xa1b2_3c4d;

    pub struct Record {
        pub ts_sec: u32,
        pub ts_frac: u32,
        pub data: Vec<u8>,
    }

    pub fn read(path: &std::path::Path) -> Result<Vec<Record>, ReplayError> {
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|source| ReplayError::Io {
                path: path.into(),
                source,
            })?;
        let bad = |detail: &str| ReplayError::Pcap {
            path: path.into(),
            detail: detail.to_string(),
        };
        if buf.len() < 24 {
            return Err(bad("shorter than a pcap header"));
        }
        let magic_le = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let le = match magic_le {
            MAGIC_US | MAGIC_NS => true,
            _ if u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) == MAGIC_US
                || u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) == MAGIC_NS =>
            {
                false
            }
            _ => return Err(bad("not a pcap file (pcapng is not supported)")),
        };
        let u32_at = |b: &[u8], o: usize| {
            let w = [b[o], b[o + 1], b[o + 2], b[o + 3]];
            if le {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            }
        };
        if u32_at(&buf, 20) != 1 {
            return Err(bad("link type is not Ethernet"));
        }
        let mut off = 24;
        let mut out = Vec::new();
        while off < buf.len() {
            if buf.len() - off < 16 {
                return Err(bad("truncated record header"));
            }
            let incl = u32_at(&buf, off + 8) as usize;
            let start = off + 16;
            if buf.len() - start < incl {
                return Err(bad("truncated record"));
            }
            out.push(Record {
                ts_sec: u32_at(&buf, off),
                ts_frac: u32_at(&buf, off + 4),
                data: buf[start..start + incl].to_vec(),
            });
            off = start + incl;
        }
        Ok(out)
    }

    pub fn write(path: &std::path::Path, records: &[Record]) -> Result<(), ReplayError> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC_US.to_le_bytes());
        buf.extend_from_slice(&2u16.to_le_bytes());
        buf.extend_from_slice(&4u16.to_le_bytes());
        // thiszone, sigfigs, snaplen, link type Ethernet.
        for w in [0u32, 0, 65535, 1] {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        for r in records {
            for w in [
                r.ts_sec,
                r.ts_frac,
                r.data.len() as u32,
                r.data.len() as u32,
            ] {
                buf.extend_from_slice(&w.to_le_bytes());
            }
            buf.extend_from_slice(&r.data);
        }
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(&buf))
            .map_err(|source| ReplayError::Io {
                path: path.into(),
                source,
            })
    }
}
