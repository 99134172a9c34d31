//! Raw `bpf(2)` for the benches' hand-assembled programs (the live-frames generator, the kernel
//! floors). They are a few instructions each, and xtask must not depend on the BPF toolchain
//! that building slb-ebpf needs.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{anyhow, Result};
use nix::libc;

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PSEUDO_MAP_FD: u8 = 1;

pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const FUNC_MAP_UPDATE_ELEM: i32 = 2;
pub const FUNC_GET_PRANDOM_U32: i32 = 7;
pub const FUNC_KTIME_GET_COARSE_NS: i32 = 160;

const XDP_DROP: i32 = 1;
pub const XDP_TX: i32 = 3;

/// Opcodes, as `linux/bpf.h` composes them.
pub mod op {
    pub const MOV64_X: u8 = 0xbf;
    pub const MOV64_K: u8 = 0xb7;
    pub const ADD64_K: u8 = 0x07;
    pub const AND64_K: u8 = 0x57;
    pub const TO_BE: u8 = 0xdc;
    pub const LDX_W: u8 = 0x61;
    pub const LDX_DW: u8 = 0x79;
    pub const ST_W: u8 = 0x62;
    pub const ST_H: u8 = 0x6a;
    pub const ST_DW: u8 = 0x7a;
    pub const STX_H: u8 = 0x6b;
    pub const STX_DW: u8 = 0x7b;
    pub const JEQ_K: u8 = 0x15;
    pub const JNE_K: u8 = 0x55;
    pub const JGT_X: u8 = 0x2d;
    pub const CALL: u8 = 0x85;
    pub const EXIT: u8 = 0x95;
}

type Insn = [u8; 8];

/// One instruction, as `struct bpf_insn` lays it out.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = dst | (src << 4);
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// `dst = map` (the two-slot `ld_imm64` with a map fd).
fn ld_map(dst: u8, map: &OwnedFd) -> [Insn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
        [0; 8],
    ]
}

/// A program under construction. It ends in `XDP_TX`; the jumps added with
/// [`Asm::fail_on`] go to an exit with `XDP_DROP`.
pub struct Asm {
    code: Vec<Insn>,
    to_fail: Vec<usize>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm {
            code: Vec::new(),
            to_fail: Vec::new(),
        }
    }

    pub fn push(&mut self, i: Insn) -> &mut Asm {
        self.code.push(i);
        self
    }

    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(insn(op::CALL, 0, 0, 0, helper))
    }

    /// `dst = fp + off`.
    pub fn stack_ptr(&mut self, dst: u8, off: i16) -> &mut Asm {
        self.push(insn(op::MOV64_X, dst, 10, 0, 0)).push(insn(
            op::ADD64_K,
            dst,
            0,
            0,
            i32::from(off),
        ))
    }

    /// Zeroes `bytes` (a multiple of 8) of the stack from `fp + at`.
    pub fn zero(&mut self, at: i16, bytes: i16) -> &mut Asm {
        for i in 0..bytes / 8 {
            self.push(insn(op::ST_DW, 10, 0, at + i * 8, 0));
        }
        self
    }

    /// `r0 = bpf_map_lookup_elem(map, fp + key_at)`.
    pub fn lookup(&mut self, map: &OwnedFd, key_at: i16) -> &mut Asm {
        self.code.extend(ld_map(1, map));
        self.stack_ptr(2, key_at).call(FUNC_MAP_LOOKUP_ELEM)
    }

    /// `r0 = bpf_map_update_elem(map, fp + key_at, fp + value_at, BPF_ANY)`.
    pub fn update(&mut self, map: &OwnedFd, key_at: i16, value_at: i16) -> &mut Asm {
        self.code.extend(ld_map(1, map));
        self.stack_ptr(2, key_at)
            .stack_ptr(3, value_at)
            .push(insn(op::MOV64_K, 4, 0, 0, 0))
            .call(FUNC_MAP_UPDATE_ELEM)
    }

    /// A conditional jump (`code`, comparing `dst` with `src` or with immediate 0) to the
    /// failure exit; `finish` sets its offset.
    pub fn fail_on(&mut self, code: u8, dst: u8, src: u8) -> &mut Asm {
        self.to_fail.push(self.code.len());
        self.push(insn(code, dst, src, 0, 0))
    }

    pub fn finish(&mut self) -> Result<OwnedFd> {
        self.push(insn(op::MOV64_K, 0, 0, 0, XDP_TX))
            .push(insn(op::EXIT, 0, 0, 0, 0));
        // The verifier refuses unreachable code, so no jumps, no failure exit.
        if !self.to_fail.is_empty() {
            let fail = self.code.len();
            self.push(insn(op::MOV64_K, 0, 0, 0, XDP_DROP))
                .push(insn(op::EXIT, 0, 0, 0, 0));
            for &at in &self.to_fail {
                self.code[at][2..4].copy_from_slice(&((fail - at - 1) as i16).to_le_bytes());
            }
        }
        load_xdp(&self.code)
    }
}

/// A `union bpf_attr`, filled field by field at the offsets the kernel header gives.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn ptr<T>(&mut self, at: usize, p: *const T) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&(p as u64).to_ne_bytes());
        self
    }

    fn read_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    fn call(&mut self, cmd: libc::c_int) -> io::Result<libc::c_long> {
        // SAFETY: the buffer is `union bpf_attr`-sized, and the callers point its pointer fields
        // at buffers that outlive the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn call_fd(&mut self, cmd: libc::c_int) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: these commands return a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

pub fn create_map(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, kind)
        .u32(4, key)
        .u32(8, value)
        .u32(12, entries)
        .call_fd(BPF_MAP_CREATE)
}

pub fn update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .ptr(8, key.as_ptr())
        .ptr(16, value.as_ptr())
        .call(BPF_MAP_UPDATE_ELEM)
        .map(drop)
}

/// Loads an XDP program; a verifier refusal carries the verifier's log.
fn load_xdp(insns: &[Insn]) -> Result<OwnedFd> {
    let code = insns.concat();
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    Attr::new()
        .u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, insns.len() as u32)
        .ptr(8, code.as_ptr())
        .ptr(16, license.as_ptr())
        .u32(24, 1) // log_level
        .u32(28, log.len() as u32)
        .ptr(32, log.as_mut_ptr())
        .call_fd(BPF_PROG_LOAD)
        .map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            anyhow!(
                "loading a benchmark XDP program: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        })
}

/// `BPF_PROG_TEST_RUN` of `frame` `repeat` times: the last verdict and the kernel's mean ns per
/// repeat.
pub fn test_run(
    prog: &OwnedFd,
    frame: &[u8],
    repeat: u32,
    ctx: Option<&[u8]>,
    flags: u32,
) -> io::Result<(u32, u32)> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, frame.len() as u32)
        .ptr(16, frame.as_ptr())
        .u32(32, repeat)
        .u32(64, flags);
    if let Some(ctx) = ctx {
        attr.u32(40, ctx.len() as u32).ptr(48, ctx.as_ptr());
    }
    attr.call(BPF_PROG_TEST_RUN)?;
    Ok((attr.read_u32(4), attr.read_u32(36)))
}
