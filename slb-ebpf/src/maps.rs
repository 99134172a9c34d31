//! Every map of the program. Sizes are defaults; the agent overrides the flow tables' capacity
//! at load time, and pins the maps so a restarted agent adopts them.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray},
};
use slb_common::*;

use crate::nat::NextHop;

/// (VIP, port, protocol) → listener.
#[map]
pub static LISTENERS: HashMap<ListenerKey, ListenerMeta> =
    HashMap::with_max_entries(MAX_LISTENERS, 0);
/// Listener id → the listener, for lookups by port (`PORT_LISTENERS`).
#[map]
pub static LISTENER_SLOTS: Array<ListenerSlot> = Array::with_max_entries(MAX_LISTENERS, 0);
/// (protocol, port) → which listeners use it (see `PORT_SHARED`): an array read is inlined by
/// the verifier, a hash lookup is a kernel call, so a port with one listener and a port with
/// none (every reply's client port, mostly) skip `LISTENERS`.
#[map]
pub static PORT_LISTENERS: Array<u32> = Array::with_max_entries(PORT_LISTENER_ENTRIES, 0);
/// Every VIP address (value unused).
#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);
/// Backend slot → address and port.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
/// Backend slot → health flag written by the agent (`BACKEND_IS_DOWN`).
#[map]
pub static BACKEND_DOWN: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);
/// Backend slot → live flows, for `wlc` and the per-backend "active flows" counter.
#[map]
pub static BACKEND_CONNS: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);
/// Maglev rings and scheduling sequences of all listeners (see `ListenerMeta::table_off`).
#[map]
pub static SLAB: Array<SlabEntry> = Array::with_max_entries(SLAB_ENTRIES, 0);
/// Listener id → round-robin position of this CPU.
#[map]
pub static CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_LISTENERS, 0);
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);
#[map]
pub static REV_FLOWS: LruHashMap<FlowKey, RevFlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);
#[map]
pub static PERSIST: LruHashMap<PersistKey, PersistEntry> =
    LruHashMap::with_max_entries(DEFAULT_PERSIST_ENTRIES, 0);
#[map]
pub static ACL_V4: LpmTrie<AclV4, u32> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static ACL_V6: LpmTrie<AclV6, u32> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static LISTENER_STATS: PerCpuArray<ListenerStats> =
    PerCpuArray::with_max_entries(MAX_LISTENERS, 0);
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GS_COUNT, 0);
/// Scratch space for the `bpf_fib_lookup` parameters (too large for the stack).
#[map]
pub static FIB_PARAMS: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);
/// Backend slot → the FIB's last answer towards it (see `nat::forward`).
#[map]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
