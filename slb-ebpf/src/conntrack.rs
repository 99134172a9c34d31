//! Connection tracking: a flow keeps its backend for its life (B4.8), TCP idle expiry after
//! `EstablishedTimeout` (B12.3), UDP idle expiry, and UDP flows leave a backend that fails its
//! health check (B4.16). LRU maps evict the oldest flows under
//! pressure; a live entry is never overwritten by another flow.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use slb_common::*;

use crate::{
    maps::{BACKEND_CONNS, BACKEND_DOWN, FLOWS, REV_FLOWS},
    parse::{Pkt, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn key(family: u8, proto: u8, src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
        family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn timeout_ns(state: u32, proto: u8, idle_timeout: u32) -> u64 {
    if proto == PROTO_TCP {
        if state & FS_CLOSING != 0 {
            return TCP_CLOSING_TIMEOUT_S as u64 * NS;
        }
        if state & FS_ESTABLISHED == 0 {
            return TCP_SYN_TIMEOUT_S as u64 * NS;
        }
    }
    idle_timeout as u64 * NS
}

#[inline(always)]
fn conns(backend: u32, delta: i64) {
    if let Some(c) = BACKEND_CONNS.get_ptr_mut(backend) {
        // SAFETY: the pointer is a live array slot; several CPUs update it, hence an atomic
        // add (BPF has no 64-bit atomic RMW in `core::sync::atomic` for this target).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, delta as u64) };
    }
}

#[inline(always)]
fn uncount(e: &mut FlowEntry) {
    if e.state & FS_COUNTED != 0 {
        e.state &= !FS_COUNTED;
        conns(e.backend, -1);
    }
}

/// Applies a packet's TCP flags to the flow state (either direction).
#[inline(always)]
fn observe(e: &mut FlowEntry, proto: u8, flags: u8) {
    if proto != PROTO_TCP {
        return;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        e.state |= FS_CLOSING;
        uncount(e);
    } else if flags & TCP_ACK != 0 && flags & TCP_SYN == 0 {
        e.state |= FS_ESTABLISHED;
    }
}

#[inline(always)]
fn track_client(e: &mut FlowEntry, pkt: &Pkt) {
    if pkt.proto == PROTO_TCP {
        e.client_next_seq = pkt.seq.wrapping_add(pkt.seq_len);
        if pkt.tcp_flags & TCP_ACK != 0 {
            e.client_ack = pkt.ack;
        }
    }
}

/// Backend of a live flow, refreshing it; `None` when there is none or it expired. A new SYN on
/// a closing or expired flow starts over, and so does a UDP flow whose backend is down: UDP has
/// no connection to keep, and datagrams to a dead backend are lost (B4.16).
#[inline(always)]
pub fn lookup(k: &FlowKey, pkt: &Pkt, idle_timeout: u32, now: u64) -> Option<u32> {
    let e = FLOWS.get_ptr_mut(k)?;
    // SAFETY: map value pointer from a successful lookup.
    let e = unsafe { &mut *e };
    let expired = now.saturating_sub(e.last_seen_ns) > timeout_ns(e.state, pkt.proto, idle_timeout);
    let restart = pkt.proto == PROTO_TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && e.state & FS_CLOSING != 0;
    let abandoned =
        pkt.proto == PROTO_UDP && BACKEND_DOWN.get(e.backend).copied() == Some(BACKEND_IS_DOWN);
    if expired || restart || abandoned {
        uncount(e);
        return None;
    }
    e.last_seen_ns = now;
    observe(e, pkt.proto, pkt.tcp_flags);
    track_client(e, pkt);
    Some(e.backend)
}

#[inline(always)]
pub fn create(k: &FlowKey, listener: u32, backend: u32, be: &Backend, pkt: &Pkt, now: u64) {
    let state = if pkt.proto == PROTO_TCP {
        FS_SYN | FS_COUNTED
    } else {
        FS_COUNTED
    };
    let mut entry = FlowEntry {
        backend,
        listener,
        state,
        client_next_seq: 0,
        last_seen_ns: now,
        client_ack: 0,
        _pad: 0,
    };
    track_client(&mut entry, pkt);
    if FLOWS.insert(k, &entry, 0).is_err() {
        return;
    }
    conns(backend, 1);
    let rk = key(pkt.family, pkt.proto, be.addr, pkt.src, be.port, pkt.sport);
    let rev = RevFlowEntry {
        vip: pkt.dst,
        vport: pkt.dport,
        _pad: 0,
        listener,
        backend,
    };
    let _ = REV_FLOWS.insert(&rk, &rev, 0);
}

/// A backend's reply keeps its client flow alive and carries its FIN/RST into the state.
#[inline(always)]
pub fn reply(k: &FlowKey, proto: u8, flags: u8, now: u64) {
    if let Some(e) = FLOWS.get_ptr_mut(k) {
        // SAFETY: map value pointer from a successful lookup.
        let e = unsafe { &mut *e };
        e.last_seen_ns = now;
        observe(e, proto, flags);
    }
}
