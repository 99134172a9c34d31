//! The kernel's floor under the per-packet targets: minimal XDP programs that do only the map
//! operations and the clock read the data path's design needs (connection tracking in LRU hash
//! maps with slb's key and value sizes), timed the way `slb bench-xdp` times the real program.
//! Whatever the real program adds on top is parsing, NAT, checksums, counters and forwarding.
use std::os::fd::OwnedFd;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::bpfsys::{
    create_map, insn, op, test_run, update, Asm, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_LRU_HASH,
    FUNC_KTIME_GET_COARSE_NS, XDP_TX,
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
        .lookup(&flows, KEY_AT)
        .fail_on(op::JEQ_K, 0, 0) // not found
        .finish()?;

    // Every new flow reads the clock, misses its flow, and inserts it and its reverse entry.
    // A counter in an array map makes each repeat's key new.
    let (flows, rev) = (lru(FLOW_VALUE)?, lru(REV_VALUE)?);
    let counter = create_map(BPF_MAP_TYPE_ARRAY, 4, 8, 1).context("creating the key counter")?;
    let mut new = Asm::new();
    new.call(FUNC_KTIME_GET_COARSE_NS)
        .push(insn(op::ST_W, 10, 0, INDEX_AT, 0))
        .lookup(&counter, INDEX_AT)
        .fail_on(op::JEQ_K, 0, 0)
        .push(insn(op::LDX_DW, 6, 0, 0, 0))
        .push(insn(op::ADD64_K, 6, 0, 0, 1))
        .push(insn(op::STX_DW, 0, 6, 0, 0))
        .zero(KEY_AT, KEY as i16)
        .push(insn(op::STX_DW, 10, 6, KEY_AT, 0))
        .zero(VALUE_AT, FLOW_VALUE as i16)
        .lookup(&flows, KEY_AT)
        .fail_on(op::JNE_K, 0, 0) // found: not a new key
        .update(&flows, KEY_AT, VALUE_AT)
        .fail_on(op::JNE_K, 0, 0)
        .update(&rev, KEY_AT, VALUE_AT)
        .fail_on(op::JNE_K, 0, 0);
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
