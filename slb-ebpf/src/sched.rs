//! New-flow backend selection over the tables the agent precomputes (B5.*, B6.1, B4.6, B4.8).
use aya_ebpf::programs::XdpContext;
use slb_common::*;

use crate::{
    maps::{BACKEND_CONNS, BACKEND_DOWN, CURSORS, PERSIST, SLAB},
    parse::{ptr_at, Pkt},
};

/// `wlc` compares at most this many members, starting at a rotating position.
const WLC_SCAN: u32 = 32;

#[inline(always)]
fn entry(meta: &ListenerMeta, idx: u32) -> Option<SlabEntry> {
    SLAB.get(meta.table_off + idx).copied()
}

/// Weight 0 drains (B4.8) and the health flag takes a backend out (B4.15).
#[inline(always)]
pub fn usable(e: &SlabEntry) -> bool {
    e.weight > 0 && BACKEND_DOWN.get(e.backend).copied() != Some(BACKEND_IS_DOWN)
}

#[inline(always)]
fn next_cursor(id: u32) -> u32 {
    match CURSORS.get_ptr_mut(id) {
        Some(c) => {
            // SAFETY: per-CPU slot.
            unsafe {
                let v = *c;
                *c = v.wrapping_add(1);
                v
            }
        }
        None => 0,
    }
}

#[inline(always)]
fn quic_hash(ctx: &XdpContext, pkt: &Pkt) -> u32 {
    // draft-ietf-quic-transport-10: the 64-bit connection ID follows the first byte in both
    // the long and the short header. The UDP length, not the frame, bounds the payload:
    // Ethernet padding is not a connection ID.
    let udp_len = match ptr_at::<[u8; 2]>(ctx, pkt.l4 + 4) {
        // SAFETY: bounds checked.
        Some(p) => u16::from_be_bytes(unsafe { *p }) as usize,
        None => 0,
    };
    if udp_len < 8 + 1 + QUIC_CID_LEN {
        return hash_source(&pkt.src);
    }
    match ptr_at::<[u8; 1 + QUIC_CID_LEN]>(ctx, pkt.l4 + 8) {
        Some(p) => {
            // SAFETY: bounds checked.
            let b = unsafe { *p };
            hash_words(&[
                u32::from_ne_bytes([b[1], b[2], b[3], b[4]]),
                u32::from_ne_bytes([b[5], b[6], b[7], b[8]]),
            ])
        }
        None => hash_source(&pkt.src),
    }
}

#[inline(always)]
fn wlc(meta: &ListenerMeta) -> Option<u32> {
    let len = meta.table_len;
    let start = next_cursor(meta.id) % len;
    let mut best: Option<(u32, u64, u64)> = None;
    let mut i = 0;
    while i < WLC_SCAN && i < len {
        let mut idx = start + i;
        if idx >= len {
            idx -= len;
        }
        if let Some(e) = entry(meta, idx) {
            if usable(&e) {
                let conns = BACKEND_CONNS.get(e.backend).copied().unwrap_or(0);
                let w = e.weight as u64;
                let better = match best {
                    None => true,
                    // conns/w < best_conns/best_w without division.
                    Some((_, bc, bw)) => conns * bw < bc * w,
                };
                if better {
                    best = Some((e.backend, conns, w));
                }
            }
        }
        i += 1;
    }
    best.map(|(b, _, _)| b)
}

/// Backend slot for a new flow of this listener, or `None` when no member is usable (B4.17).
#[inline(always)]
pub fn pick(ctx: &XdpContext, meta: &ListenerMeta, pkt: &Pkt, now: u64) -> Option<u32> {
    let len = meta.table_len;
    if len == 0 {
        return None;
    }
    if meta.persistence_timeout > 0 {
        if let Some(b) = persisted(meta, pkt, now) {
            return Some(b);
        }
    }
    let start = match meta.scheduler {
        SCHED_SCH => hash_source(&pkt.src) % len,
        SCHED_TCH => hash_tuple(&pkt.src, &pkt.dst, pkt.sport, pkt.dport) % len,
        SCHED_QCH => quic_hash(ctx, pkt) % len,
        SCHED_WRR | SCHED_RR => next_cursor(meta.id) % len,
        SCHED_WLC => return wlc(meta),
        _ => 0,
    };
    let mut i = 0;
    while i < MAX_PROBES {
        let idx = (start + i) % len;
        if let Some(e) = entry(meta, idx) {
            if usable(&e) {
                return Some(e.backend);
            }
        }
        i += 1;
    }
    // A heavy member that is down can fill more than MAX_PROBES slots in a row; only when no
    // member at all is usable are new flows dropped (B4.17).
    let members = meta.members_len;
    let mut i = 0;
    while i < MAX_MEMBER_SCAN && i < members {
        if let Some(e) = entry(meta, len + (start + i) % members) {
            if usable(&e) {
                return Some(e.backend);
            }
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn persisted(meta: &ListenerMeta, pkt: &Pkt, now: u64) -> Option<u32> {
    let key = PersistKey {
        listener: meta.id,
        src: pkt.src,
    };
    let p = PERSIST.get_ptr(&key)?;
    // SAFETY: map value pointer from a successful lookup.
    let p = unsafe { *p };
    let alive =
        now.saturating_sub(p.last_seen_ns) <= meta.persistence_timeout as u64 * 1_000_000_000;
    let down = BACKEND_DOWN.get(p.backend).copied() == Some(BACKEND_IS_DOWN);
    if alive && !down {
        Some(p.backend)
    } else {
        None
    }
}

/// Records or refreshes the source's persistence entry (B6.1: idle expiry).
#[inline(always)]
pub fn persist(meta: &ListenerMeta, pkt: &Pkt, backend: u32, now: u64) {
    let key = PersistKey {
        listener: meta.id,
        src: pkt.src,
    };
    if let Some(p) = PERSIST.get_ptr_mut(&key) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            if (*p).backend == backend {
                (*p).last_seen_ns = now;
                return;
            }
        }
    }
    let _ = PERSIST.insert(
        &key,
        &PersistEntry {
            backend,
            _pad: 0,
            last_seen_ns: now,
        },
        0,
    );
}
