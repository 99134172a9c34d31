//! `slb simulate`: which backend a new flow gets, computed from the same table the kernel
//! indexes and the same hash (`slb_common::hash_*`) — a mirror of `slb-ebpf/src/sched.rs` for a
//! fresh flow with every backend healthy and no persistence entry.
use std::net::SocketAddr;

use slb_common::*;

use crate::dataplane::image::{addr_words, ListenerImage, TableEntry};

/// Index into the listener's table where the kernel starts probing, or `None` for schedulers
/// whose choice depends on run-time state (round-robin cursors, connection counts).
pub fn start_index(
    li: &ListenerImage,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Option<u32> {
    let len = li.table.len() as u32;
    if len == 0 {
        return None;
    }
    let (s, _) = addr_words(src.ip());
    let (d, _) = addr_words(dst.ip());
    let h = match li.scheduler {
        SCHED_SCH => hash_source(&s),
        SCHED_TCH => hash_tuple(&s, &d, src.port().to_be(), dst.port().to_be()),
        SCHED_QCH => match payload.get(1..1 + QUIC_CID_LEN) {
            Some(c) => hash_words(&[
                u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            ]),
            None => hash_source(&s),
        },
        SCHED_MASTER_SLAVE => 0,
        _ => return None,
    };
    Some(h % len)
}

/// The backend a new flow gets when its start index is known (see `start_index`).
pub fn pick(li: &ListenerImage, start: u32) -> Option<&TableEntry> {
    let len = li.table.len() as u32;
    (0..MAX_PROBES)
        .map(|i| &li.table[((start + i) % len) as usize])
        .find(|e| e.weight > 0)
}
