//! The kernel's floor under the per-packet targets: minimal XDP programs that do only the map
//! operations and the clock read the data path's design needs (connection tracking in LRU hash
//! maps with slb's key and value sizes), timed the way `slb bench-xdp` times the real program.
//! Whatever the real program adds on top is parsing, NAT, checksums, counters and forwarding.
use std::os::fd::OwnedFd;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::bpfsys::{
    create_map, insn, ld_map, load_xdp, op, test_run, update, Insn, BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_LRU_HASH, FUNC_KTIME_GET_COARSE_NS, FUNC_MAP_LOOKUP_ELEM, FUNC_MAP_UPDATE_ELEM,
    XDP_DROP, XDP_TX,
};

/// `FlowKey`, `FlowEntry` and `RevFlowEntry` in slb-common, and slb's default flow table.
const KEY: u32 = 40;
const FLOW_VALUE: u32 = 32;
const REV_VALUE: u32 = 28;
const ENTRIES: u32 = 1 << 20;
const CALLS: usize = 5;
const HIT_REPEAT: u32 = 100_000;
/// 5 × 20,000 new keys stay well inside the table, as in `bench-xdp`'s new-flow cases.
const NEW_REPEAT: u32 = 20_000;
/// Stack slots: the key at fp-40, the array index at fp-44, a zero value at fp-80.
const KEY_AT: i16 = -40;
const INDEX_AT: i16 = -44;
const VALUE_AT: i16 = -80;

/// A program under construction, with forward jumps to its failure exit.
struct Asm {
    code: Vec<Insn>,
    to_fail: Vec<usize>,
}

impl Asm {
    fn new() -> Asm {
        Asm {
            code: Vec::new(),
            to_fail: Vec::new(),
        }
    }

    fn push(&mut self, i: Insn) -> &mut Asm {
        self.code.push(i);
        self
    }

    fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(insn(op::CALL, 0, 0, 0, helper))
    }

    /// `dst = fp + off`.
    fn stack_ptr(&mut self, dst: u8, off: i16) -> &mut Asm {
        self.push(insn(op::MOV64_X, dst, 10, 0, 0)).push(insn(
            op::ADD64_K,
            dst,
            0,
            0,
            i32::from(off),
        ))
    }

    fn zero(&mut self, at: i16, bytes: i16) -> &mut Asm {
        for i in 0..bytes / 8 {
            self.push(insn(op::ST_DW, 10, 0, at + i * 8, 0));
        }
        self
    }

    fn map(&mut self, dst: u8, map: &OwnedFd) -> &mut Asm {
        self.code.extend(ld_map(dst, map));
        self
    }

    /// Jumps to the failure exit when `r0 == 0` (`null`) or `r0 != 0`; `finish` sets the offset.
    fn fail_if(&mut self, null: bool) -> &mut Asm {
        self.to_fail.push(self.code.len());
        self.push(insn(if null { op::JEQ_K } else { op::JNE_K }, 0, 0, 0, 0))
    }

    fn lookup(&mut self, map: &OwnedFd) -> &mut Asm {
        self.map(1, map)
            .stack_ptr(2, KEY_AT)
            .call(FUNC_MAP_LOOKUP_ELEM)
    }

    fn insert(&mut self, map: &OwnedFd) -> &mut Asm {
        self.map(1, map)
            .stack_ptr(2, KEY_AT)
            .stack_ptr(3, VALUE_AT)
            .push(insn(op::MOV64_K, 4, 0, 0, 0))
            .call(FUNC_MAP_UPDATE_ELEM)
            .fail_if(false)
    }

    /// Success returns `XDP_TX`, failure `XDP_DROP`.
    fn finish(&mut self) -> Result<OwnedFd> {
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

fn lru(value: u32) -> Result<OwnedFd> {
    create_map(BPF_MAP_TYPE_LRU_HASH, KEY, value, ENTRIES).context("creating an LRU hash map")
}

/// Median kernel-reported ns per repeat over `CALLS` calls; every call must end in `XDP_TX`.
fn time(prog: &OwnedFd, repeat: u32) -> Result<u32> {
    let frame = [0u8; 64];
    let mut ns = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let (retval, duration) =
            test_run(prog, &frame, repeat, None, 0).context("BPF_PROG_TEST_RUN")?;
        if retval != XDP_TX as u32 {
            bail!("a floor program took its failure path (verdict {retval})");
        }
        ns.push(duration);
    }
    ns.sort_unstable();
    Ok(ns[CALLS / 2])
}

pub fn measure() -> Result<Value> {
    let empty = Asm::new().finish()?;

    // Every hit reads the clock and finds its flow.
    let flows = lru(FLOW_VALUE)?;
    update(&flows, &[0; KEY as usize], &[0; FLOW_VALUE as usize])
        .context("inserting the flow that the hit floor finds")?;
    let hit = Asm::new()
        .call(FUNC_KTIME_GET_COARSE_NS)
        .zero(KEY_AT, KEY as i16)
        .lookup(&flows)
        .fail_if(true)
        .finish()?;

    // Every new flow reads the clock, misses its flow, and inserts it and its reverse entry.
    // A counter in an array map makes each repeat's key new.
    let (flows, rev) = (lru(FLOW_VALUE)?, lru(REV_VALUE)?);
    let counter = create_map(BPF_MAP_TYPE_ARRAY, 4, 8, 1).context("creating the key counter")?;
    let mut new = Asm::new();
    new.call(FUNC_KTIME_GET_COARSE_NS)
        .push(insn(op::ST_W, 10, 0, INDEX_AT, 0))
        .map(1, &counter)
        .stack_ptr(2, INDEX_AT)
        .call(FUNC_MAP_LOOKUP_ELEM)
        .fail_if(true)
        .push(insn(op::LDX_DW, 6, 0, 0, 0))
        .push(insn(op::ADD64_K, 6, 0, 0, 1))
        .push(insn(op::STX_DW, 0, 6, 0, 0))
        .zero(KEY_AT, KEY as i16)
        .push(insn(op::STX_DW, 10, 6, KEY_AT, 0))
        .zero(VALUE_AT, FLOW_VALUE as i16)
        .lookup(&flows)
        .fail_if(false)
        .insert(&flows)
        .insert(&rev);
    let new = new.finish()?;

    let loop_ns = time(&empty, HIT_REPEAT)?;
    let hit_ns = time(&hit, HIT_REPEAT)?;
    let new_ns = time(&new, NEW_REPEAT)?;
    Ok(json!({
        "method": format!(
            "hand-assembled XDP programs through BPF_PROG_TEST_RUN, median of {CALLS} calls; \
             LRU hash maps of {ENTRIES} entries with a {KEY}-byte key and {FLOW_VALUE}-byte \
             (reverse: {REV_VALUE}-byte) values, as slb's flow tables"
        ),
        "empty_program_ns": loop_ns,
        "hit_floor_ns": hit_ns,
        "hit_floor_what": "bpf_ktime_get_coarse_ns + one LRU lookup that finds the flow",
        "new_flow_floor_ns": new_ns,
        "new_flow_floor_what": "bpf_ktime_get_coarse_ns + one LRU lookup that misses + \
                                LRU inserts of the flow and its reverse entry (new keys, \
                                table not full)",
    }))
}
