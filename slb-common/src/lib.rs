//! Every BPF map key/value layout and constant shared by the XDP program and the agent.
//!
//! # Layout
//! - map names and sizes (`MAP_*`, `MAX_*`)
//! - listener, backend, flow, persistence and ACL key/value types
//! - counter indices (`LS_*`, `GS_*`)
//! - the flow hash used by the consistent-hash schedulers
//!
//! Addresses are kept in network byte order, IPv4 in the first word of `[u32; 4]` with the
//! remaining words zero; `family` disambiguates. Ports are in network byte order in keys and
//! backend records, exactly as they sit in the packet.
#![no_std]

use core::mem::size_of;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Listener slots: per-listener counters and cursors are arrays indexed by `ListenerMeta::id`.
pub const MAX_LISTENERS: u32 = 4096;
/// Backend slots; one slot per distinct (address, port), shared by every listener using it.
pub const MAX_BACKENDS: u32 = 65536;
/// Entries of the table slab holding every listener's Maglev ring or scheduling sequence.
pub const SLAB_ENTRIES: u32 = 1 << 21;
/// Default capacity of each connection-tracking table (flows), overridable in the config.
pub const DEFAULT_FLOW_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_PERSIST_ENTRIES: u32 = 1 << 18;
pub const MAX_ACL_ENTRIES: u32 = 1 << 17;
/// How many successive table slots the kernel probes when the chosen backend is down or drained.
pub const MAX_PROBES: u32 = 16;
/// How many distinct members the kernel scans after the probes failed.
pub const MAX_MEMBER_SCAN: u32 = 64;
/// Maglev rings are at least this many slots per backend (paper: M ≫ N).
pub const MAGLEV_SLOTS_PER_BACKEND: u32 = 100;
pub const MAGLEV_MIN_SIZE: u32 = 251;

/// UDP flows idle this long are forgotten (B4.16 allows up to 300 s).
pub const UDP_IDLE_TIMEOUT_S: u32 = 300;
/// A TCP flow that saw FIN or RST is forgotten after this much idle time.
pub const TCP_CLOSING_TIMEOUT_S: u32 = 10;
/// A TCP flow still in its handshake is forgotten after this much idle time.
pub const TCP_SYN_TIMEOUT_S: u32 = 30;

pub const MAP_LISTENERS: &str = "LISTENERS";
pub const MAP_LISTENER_SLOTS: &str = "LISTENER_SLOTS";
pub const MAP_PORT_LISTENERS: &str = "PORT_LISTENERS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_BACKEND_DOWN: &str = "BACKEND_DOWN";
pub const MAP_BACKEND_CONNS: &str = "BACKEND_CONNS";
pub const MAP_SLAB: &str = "SLAB";
pub const MAP_CURSORS: &str = "CURSORS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_REV_FLOWS: &str = "REV_FLOWS";
pub const MAP_PERSIST: &str = "PERSIST";
pub const MAP_ACL_V4: &str = "ACL_V4";
pub const MAP_ACL_V6: &str = "ACL_V6";
pub const MAP_LISTENER_STATS: &str = "LISTENER_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_GLOBAL_STATS: &str = "GLOBAL_STATS";
/// Every map the program declares, in the order `slb stats` and the pin directory list them.
pub const ALL_MAPS: [&str; 17] = [
    MAP_LISTENERS,
    MAP_LISTENER_SLOTS,
    MAP_PORT_LISTENERS,
    MAP_VIPS,
    MAP_BACKENDS,
    MAP_BACKEND_DOWN,
    MAP_BACKEND_CONNS,
    MAP_SLAB,
    MAP_CURSORS,
    MAP_FLOWS,
    MAP_REV_FLOWS,
    MAP_PERSIST,
    MAP_ACL_V4,
    MAP_ACL_V6,
    MAP_LISTENER_STATS,
    MAP_BACKEND_STATS,
    MAP_GLOBAL_STATS,
];
pub const PROGRAM_NAME: &str = "slb_xdp";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<ListenerKey>() == 20);

/// `PORT_LISTENERS` has one entry per (protocol, port): TCP ports first, then UDP.
pub const PORT_LISTENER_ENTRIES: u32 = 2 << 16;
/// `PORT_LISTENERS` value: listeners of several VIPs use this port, look the key up in
/// `LISTENERS`. Otherwise a value is 0 (no listener) or the one listener's id + 1.
pub const PORT_SHARED: u32 = u32::MAX;

/// Index into `PORT_LISTENERS` of a (protocol, port as in the packet).
#[inline(always)]
pub fn port_index(proto: u8, port: u16) -> u32 {
    let udp = u32::from(proto == PROTO_UDP);
    (udp << 16) | u32::from(port)
}

/// `LISTENER_SLOTS[id]`: the listener with that id, key included, so that a lookup by port
/// alone can check the VIP. A zero key marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSlot {
    pub key: ListenerKey,
    pub meta: ListenerMeta,
}
const _: () = assert!(size_of::<ListenerSlot>() == 60);

/// The listener accepts new flows (listener `Status` running).
pub const LF_RUNNING: u32 = 1;
/// The load balancer instance is `active` (B2.2).
pub const LF_INSTANCE_ACTIVE: u32 = 1 << 1;
/// HTTP/HTTPS listener: after the ACL verdict the packet goes to the kernel stack (the L7 agent).
pub const LF_L7: u32 = 1 << 2;
/// ACL `white` with at least one entry: only matching sources pass (B7.2, B7.4).
pub const LF_ACL_WHITE: u32 = 1 << 3;
/// ACL `black` with at least one entry: matching sources are dropped (B7.3, B7.4).
pub const LF_ACL_BLACK: u32 = 1 << 4;
/// Legacy white list `open_white_list`: only matching sources pass, empty list passes none (B7.8).
pub const LF_LEGACY_WHITE: u32 = 1 << 5;

pub const SCHED_WRR: u32 = 0;
pub const SCHED_RR: u32 = 1;
pub const SCHED_WLC: u32 = 2;
pub const SCHED_SCH: u32 = 3;
pub const SCHED_TCH: u32 = 4;
pub const SCHED_QCH: u32 = 5;
/// Master/slave group: the table is `[master, slave]`, the first usable one wins (B4.6).
pub const SCHED_MASTER_SLAVE: u32 = 6;

/// Key of `VIPS`: every service address, so that fragments and IPv4 options addressed to a VIP
/// can be recognised without ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<VipKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerMeta {
    /// Index into the per-listener arrays (stats, cursors).
    pub id: u32,
    pub flags: u32,
    pub scheduler: u32,
    /// `SLAB[table_off .. table_off + table_len]` holds backend slots: a Maglev ring for
    /// `sch`/`tch`/`qch`, a smooth weighted round-robin sequence for `wrr`, each usable member
    /// once for `rr` and `wlc`, `[master, slave]` for master/slave groups.
    pub table_off: u32,
    pub table_len: u32,
    /// ACL id looked up in `ACL_V4`/`ACL_V6` for `LF_ACL_*`.
    pub acl_id: u32,
    /// ACL id of the legacy white list, for `LF_LEGACY_WHITE`.
    pub legacy_acl_id: u32,
    /// Source-IP persistence in seconds, 0 = off (B6.1).
    pub persistence_timeout: u32,
    /// Idle timeout of an established flow in seconds (TCP `EstablishedTimeout`, UDP idle).
    pub idle_timeout: u32,
    /// The distinct members follow the table in the slab (`table_off + table_len ..`): when
    /// probing the table finds only down or drained backends, the kernel scans these.
    pub members_len: u32,
}
const _: () = assert!(size_of::<ListenerMeta>() == 40);

/// Backend record; `port` is the backend port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u8,
    /// Non-zero when the slot is in use.
    pub in_use: u8,
}
const _: () = assert!(size_of::<Backend>() == 20);

/// `BACKEND_DOWN[slot]` value that takes a backend out of new-flow selection (health flag).
pub const BACKEND_IS_DOWN: u32 = 1;

/// A table slab entry: backend slot plus its weight, so the kernel can skip weight-0 members
/// without another lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlabEntry {
    pub backend: u32,
    pub weight: u32,
}
const _: () = assert!(size_of::<SlabEntry>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// TCP flow state bits kept in `FlowEntry::state`.
pub const FS_SYN: u32 = 1;
pub const FS_ESTABLISHED: u32 = 1 << 1;
pub const FS_CLOSING: u32 = 1 << 2;
/// The flow was counted in `BACKEND_CONNS` and has not been uncounted yet.
pub const FS_COUNTED: u32 = 1 << 3;

/// Client → VIP flow, keyed by the packet as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub backend: u32,
    pub listener: u32,
    pub state: u32,
    /// Next sequence number the client will send (host order): a RST to the backend with it
    /// is accepted exactly (RFC 5961), when the agent closes an idle flow (B12.3).
    pub client_next_seq: u32,
    /// `bpf_ktime_get_ns` of the last packet, in either direction.
    pub last_seen_ns: u64,
    /// Last acknowledgment number the client sent (host order): the sequence a RST to the
    /// client must carry.
    pub client_ack: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowEntry>() == 32);

/// Backend → client flow, keyed by the reply as the backend sends it; says how to undo the DNAT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevFlowEntry {
    pub vip: [u32; 4],
    pub vport: u16,
    pub _pad: u16,
    pub listener: u32,
    pub backend: u32,
}
const _: () = assert!(size_of::<RevFlowEntry>() == 28);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersistKey {
    pub listener: u32,
    pub src: [u32; 4],
}
const _: () = assert!(size_of::<PersistKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistEntry {
    pub backend: u32,
    pub _pad: u32,
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<PersistEntry>() == 16);

/// LPM key data for IPv4 ACLs: the ACL id (big-endian, full 32-bit prefix) then the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AclV4 {
    pub acl: [u8; 4],
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<AclV4>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AclV6 {
    pub acl: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<AclV6>() == 20);

/// Per-listener counters, one slot per `LS_*` index.
pub const LS_PACKETS: usize = 0;
pub const LS_BYTES: usize = 1;
pub const LS_NEW_FLOWS: usize = 2;
pub const LS_REPLY_PACKETS: usize = 3;
pub const LS_REPLY_BYTES: usize = 4;
pub const LS_DROP_STOPPED: usize = 5;
pub const LS_DROP_INACTIVE: usize = 6;
pub const LS_DROP_ACL: usize = 7;
pub const LS_DROP_NO_BACKEND: usize = 8;
pub const LS_DROP_NO_FLOW: usize = 9;
pub const LS_PASS_L7: usize = 10;
pub const LS_COUNT: usize = 11;
pub const LS_NAMES: [&str; LS_COUNT] = [
    "packets",
    "bytes",
    "new_flows",
    "reply_packets",
    "reply_bytes",
    "drop_stopped",
    "drop_inactive",
    "drop_acl",
    "drop_no_backend",
    "drop_no_flow",
    "pass_l7",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub c: [u64; LS_COUNT],
}

pub const BS_PACKETS: usize = 0;
pub const BS_BYTES: usize = 1;
pub const BS_REPLY_PACKETS: usize = 2;
pub const BS_REPLY_BYTES: usize = 3;
pub const BS_NEW_FLOWS: usize = 4;
pub const BS_COUNT: usize = 5;
pub const BS_NAMES: [&str; BS_COUNT] = [
    "packets",
    "bytes",
    "reply_packets",
    "reply_bytes",
    "new_flows",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub c: [u64; BS_COUNT],
}

/// Global counters (`GLOBAL_STATS[GS_*]`, per CPU).
pub const GS_PACKETS: u32 = 0;
/// Ethernet, VLAN, IP or L4 header shorter than its fixed size.
pub const GS_TRUNCATED: u32 = 1;
/// IPv4 header length field below 5 words or beyond the packet, bad IP version.
pub const GS_MALFORMED: u32 = 2;
/// IPv4 or IPv6 fragment addressed to a listener (B12.6): dropped.
pub const GS_FRAGMENT: u32 = 3;
/// IPv4 header with options addressed to a listener: dropped.
pub const GS_IP_OPTIONS: u32 = 4;
/// Not for any listener (other protocols, other addresses): passed untouched.
pub const GS_PASS_NOT_LISTENER: u32 = 5;
/// Next hop unresolved by the FIB: the translated packet is passed to the kernel stack.
pub const GS_FIB_PASS: u32 = 6;
/// FIB said the destination is unreachable or forwarding is disabled: dropped.
pub const GS_FIB_DROP: u32 = 7;
/// More VLAN tags than the one supported, or an IPv6 extension header before TCP/UDP: passed.
pub const GS_PASS_UNSUPPORTED: u32 = 8;
/// Replies from a backend that match a reverse flow and were translated back.
pub const GS_REVERSE_NAT: u32 = 9;
pub const GS_COUNT: u32 = 10;
pub const GS_NAMES: [&str; GS_COUNT as usize] = [
    "packets",
    "truncated",
    "malformed",
    "fragment",
    "ip_options",
    "pass_not_listener",
    "fib_pass",
    "fib_drop",
    "pass_unsupported",
    "reverse_nat",
];

/// The proxy's worker picker (`slb-workers`, a reuseport program): its map of worker states
/// and its program. A listener's sockets join their `SO_REUSEPORT` group in worker order, so
/// the index the program returns is a worker's.
pub const MAP_PROXY_WORKERS: &str = "PROXY_WORKERS";
pub const PROGRAM_PICK_WORKER: &str = "slb_pick_worker";
/// The worker count the program is loaded with (a read-only global).
pub const GLOBAL_PROXY_WORKERS: &str = "PROXY_WORKER_COUNT";
/// Workers the program chooses between; an agent with more runs without it.
pub const MAX_PROXY_WORKERS: u32 = 256;

/// One proxy worker's state as the worker picker reads it (`PROXY_WORKERS[worker]`), written
/// by the worker through a shared mapping of the map. A cache line each: a worker writes its
/// own twice per wait, and a shared line would bounce between the cores on every one.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyWorker {
    /// Client connections the worker has open.
    pub connections: u32,
    /// Non-zero while the worker waits for events with nothing to run.
    pub parked: u32,
    pub _pad: [u32; 14],
}
const _: () = assert!(size_of::<ProxyWorker>() == 64);

/// The flow hash used by `sch`/`tch`/`qch` and by `wlc`'s two choices, identical in the
/// kernel and in `slb simulate`: a 32-bit FNV-1a over 32-bit words, followed by a
/// murmur3-style finalizer so that low bits are well mixed before the modulo.
#[inline(always)]
pub fn hash_words(words: &[u32]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < words.len() {
        h ^= words[i];
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    fmix32(h)
}

#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a source address (`sch`, persistence-free consistent hash).
#[inline(always)]
pub fn hash_source(src: &[u32; 4]) -> u32 {
    hash_words(src)
}

/// Hash of the 4-tuple (`tch`): source and destination addresses and ports as in the packet.
#[inline(always)]
pub fn hash_tuple(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16) -> u32 {
    hash_words(&[
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
        ((sport as u32) << 16) | dport as u32,
    ])
}

/// Bytes of the QUIC connection ID hashed by `qch` (draft-ietf-quic-transport-10 long and short
/// headers carry an 8-byte ID right after the first byte, or after the version for long headers).
pub const QUIC_CID_LEN: usize = 8;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is `#[repr(C)]`, `Copy`, and has no padding bytes (asserted by size).
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for ListenerMeta {}
    unsafe impl aya::Pod for ListenerSlot {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for SlabEntry {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for RevFlowEntry {}
    unsafe impl aya::Pod for PersistKey {}
    unsafe impl aya::Pod for PersistEntry {}
    unsafe impl aya::Pod for AclV4 {}
    unsafe impl aya::Pod for AclV6 {}
    unsafe impl aya::Pod for ListenerStats {}
    unsafe impl aya::Pod for BackendStats {}
}
