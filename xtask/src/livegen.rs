//! The lab's traffic generator: a two-dozen-instruction XDP program run by `BPF_PROG_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (the xdp-trafficgen method). Each run writes a UDP/IPv4 header
//! template with a random source port (1,024 flows) and returns `XDP_TX`, which sends the frame
//! out of the client's veth. Sending costs tens of nanoseconds per packet instead of a
//! `send(2)`, so the two cores spend their time on the load balancer under test.
//!
//! The program rewrites the whole header on every run because live frames are recycled without
//! being re-initialised: a frame that the load balancer translated in place would otherwise come
//! back out of the generator already addressed to a backend.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;
use xtask::{cmd, lab};

use crate::bpfsys::{insn, op, test_run, Asm, BPF_F_TEST_XDP_LIVE_FRAMES, FUNC_GET_PRANDOM_U32};

/// Ethernet + IPv4 + UDP.
const HEADERS: usize = 42;
/// Frames per `BPF_PROG_RUN` call: long enough to amortise the call, short enough to notice
/// the stop flag within a fraction of a second.
const REPEAT: u32 = 1 << 16;
const FIRST_PORT: i32 = 10_000;
/// Source ports `FIRST_PORT..FIRST_PORT + FLOWS`; a power of two, masked in the program.
pub const FLOWS: i32 = 1024;

/// Where the generated frames come from and go to.
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub payload: usize,
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        let ip_len = 20 + 8 + self.payload;
        let mut f = Vec::with_capacity(14 + ip_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        f.extend_from_slice(&ip);
        // Source port is written by the program; checksum 0 is "none" for UDP over IPv4.
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.resize(14 + ip_len, 0x5a);
        f
    }
}

/// The generator program for `header` (the first [`HEADERS`] bytes of the frame).
fn program(header: &[u8]) -> Result<OwnedFd> {
    let mut p = Asm::new();
    p.push(insn(op::MOV64_X, 6, 1, 0, 0)) // r6 = ctx
        .call(FUNC_GET_PRANDOM_U32)
        .push(insn(op::MOV64_X, 7, 0, 0, 0)) // r7 = random
        .push(insn(op::LDX_W, 2, 6, 0, 0)) // r2 = ctx->data
        .push(insn(op::LDX_W, 3, 6, 4, 0)) // r3 = ctx->data_end
        .push(insn(op::MOV64_X, 4, 2, 0, 0))
        .push(insn(op::ADD64_K, 4, 0, 0, HEADERS as i32))
        .fail_on(op::JGT_X, 4, 3); // shorter than the header
    for (i, word) in header[..40].chunks(4).enumerate() {
        let imm = i32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        p.push(insn(op::ST_W, 2, 0, (i * 4) as i16, imm));
    }
    let last = i32::from(u16::from_le_bytes([header[40], header[41]]));
    p.push(insn(op::ST_H, 2, 0, 40, last))
        .push(insn(op::AND64_K, 7, 0, 0, FLOWS - 1))
        .push(insn(op::ADD64_K, 7, 0, 0, FIRST_PORT))
        .push(insn(op::TO_BE, 7, 0, 0, 16))
        .push(insn(op::STX_H, 2, 7, 34, 0)) // UDP source port
        .finish()
}

/// Sends `REPEAT` frames out of `ifindex` (in the calling thread's namespace).
fn send(program: &OwnedFd, frame: &[u8], ifindex: u32) -> io::Result<()> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    test_run(
        program,
        frame,
        REPEAT,
        Some(&ctx),
        BPF_F_TEST_XDP_LIVE_FRAMES,
    )
    .map(drop)
}

/// The MAC address and ifindex of `iface` in `ns`.
pub fn link(ns: &str, iface: &str) -> Result<([u8; 6], u32)> {
    let out = cmd::output(Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", iface]))?;
    let v: Value = serde_json::from_str(&out).context("parsing `ip -j link show`")?;
    let mac = v[0]["address"]
        .as_str()
        .context("`ip -j link` gave no address")?;
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing MAC address {mac}"))?;
    let mac = <[u8; 6]>::try_from(bytes).map_err(|_| anyhow!("{iface} has no 6-byte address"))?;
    let ifindex = v[0]["ifindex"]
        .as_u64()
        .context("`ip -j link` gave no ifindex")?;
    Ok((mac, u32::try_from(ifindex)?))
}

/// Generator threads sending out of `iface` in `ns`, as fast as the cores allow.
pub struct Generator {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Result<()>>>>,
}

impl Generator {
    pub fn start(ns: &str, iface: &str, frame: &Frame, threads: usize) -> Result<Generator> {
        let bytes = Arc::new(frame.bytes());
        let program = Arc::new(program(&bytes[..HEADERS])?);
        let (_, ifindex) = link(ns, iface)?;
        let (sent, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut handles = Vec::new();
        for _ in 0..threads {
            let (bytes, program, sent, stop) = (
                Arc::clone(&bytes),
                Arc::clone(&program),
                Arc::clone(&sent),
                Arc::clone(&stop),
            );
            // Live frames leave through `ifindex` as the calling thread's namespace sees it.
            handles.push(lab::spawn_in_netns(ns, move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    send(&program, &bytes, ifindex).context("BPF_PROG_RUN with live frames")?;
                    sent.fetch_add(u64::from(REPEAT), Ordering::Relaxed);
                }
                Ok(())
            })?);
        }
        Ok(Generator {
            sent,
            stop,
            threads: handles,
        })
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join()
                .map_err(|_| anyhow!("a generator thread panicked"))???;
        }
        Ok(())
    }
}
