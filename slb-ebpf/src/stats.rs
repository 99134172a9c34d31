//! Per-CPU counters; every drop path increments one.
use slb_common::{BS_BYTES, BS_PACKETS, LS_BYTES, LS_PACKETS};

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, LISTENER_STATS};

#[inline(always)]
pub fn global(idx: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn listener(id: u32, idx: usize, v: u64) {
    if let Some(s) = LISTENER_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot; `idx` is one of the `LS_*` constants.
        unsafe { (*s).c[idx] += v };
    }
}

#[inline(always)]
pub fn listener_packet(id: u32, pkt_idx: usize, len: u64) {
    if let Some(s) = LISTENER_STATS.get_ptr_mut(id) {
        // SAFETY: as above.
        unsafe {
            (*s).c[pkt_idx] += 1;
            (*s).c[pkt_idx + (LS_BYTES - LS_PACKETS)] += len;
        }
    }
}

#[inline(always)]
pub fn backend(slot: u32, idx: usize, v: u64) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; `idx` is one of the `BS_*` constants.
        unsafe { (*s).c[idx] += v };
    }
}

#[inline(always)]
pub fn backend_packet(slot: u32, pkt_idx: usize, len: u64) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            (*s).c[pkt_idx] += 1;
            (*s).c[pkt_idx + (BS_BYTES - BS_PACKETS)] += len;
        }
    }
}
