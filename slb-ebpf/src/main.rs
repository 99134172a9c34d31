//! The slb XDP program: TCP/UDP listeners forwarded entirely in XDP.
//!
//! # Layout
//! - `parse`: Ethernet (+ one VLAN tag), IPv4/IPv6, TCP/UDP; fragments and options
//! - `acl`: ACL policy groups and the legacy white list
//! - `conntrack`: flow tables and their expiry
//! - `sched`: new-flow backend selection (Maglev rings, sequences, wlc, persistence)
//! - `nat`: DNAT / reverse NAT with incremental checksums, FIB forwarding
//! - `stats`: per-CPU counters
//! - `maps`: every map
#![no_std]
#![no_main]
// Atomic add on a map value: the BPF target has no 64-bit atomics in `core::sync::atomic`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod acl;
mod conntrack;
mod csum;
mod maps;
mod nat;
mod parse;
mod sched;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use slb_common::*;

use crate::{
    maps::{BACKENDS, LISTENERS, LISTENER_SLOTS, PORT_LISTENERS, REV_FLOWS},
    nat::End,
    parse::{Pkt, TCP_ACK, TCP_SYN},
};

#[xdp]
pub fn slb_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// For the far end of veth pairs: frames redirected into a veth need an XDP program on the
/// receiving peer.
#[xdp]
pub fn slb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    stats::global(GS_PACKETS);
    let mut pkt = match parse::parse(ctx) {
        Ok(p) => p,
        Err(action) => return action,
    };
    if let Some(meta) = listener(&pkt) {
        return to_backend(ctx, &mut pkt, &meta);
    }
    let rkey = conntrack::key(
        pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
    );
    // SAFETY: as above.
    if let Some(rev) = unsafe { REV_FLOWS.get(&rkey) }.copied() {
        return to_client(ctx, &mut pkt, &rev);
    }
    stats::global(GS_PASS_NOT_LISTENER);
    xdp_action::XDP_PASS
}

/// The listener the packet is addressed to, if any.
#[inline(always)]
fn listener(pkt: &Pkt) -> Option<ListenerMeta> {
    let key = ListenerKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    match PORT_LISTENERS
        .get(port_index(pkt.proto, pkt.dport))
        .copied()
    {
        None | Some(0) => None,
        // SAFETY: the value is copied out at once.
        Some(PORT_SHARED) => unsafe { LISTENERS.get(&key) }.copied(),
        Some(n) => {
            let slot = LISTENER_SLOTS.get(n - 1)?;
            let k = &slot.key;
            let same = nat::same_addr(&k.addr, &key.addr)
                && k.port == key.port
                && k.proto == key.proto
                && k.family == key.family;
            same.then_some(slot.meta)
        }
    }
}

#[inline(always)]
fn drop(id: u32, counter: usize) -> u32 {
    stats::listener(id, counter, 1);
    xdp_action::XDP_DROP
}

/// Client → VIP: filter, find or choose the backend, DNAT, forward.
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &mut Pkt, meta: &ListenerMeta) -> u32 {
    let id = meta.id;
    stats::listener_packet(id, LS_PACKETS, pkt.len);
    if meta.flags & LF_INSTANCE_ACTIVE == 0 {
        return drop(id, LS_DROP_INACTIVE);
    }
    if meta.flags & LF_RUNNING == 0 {
        return drop(id, LS_DROP_STOPPED);
    }
    if meta.flags & LF_L7 != 0 {
        if !acl::allowed(meta, pkt) {
            return drop(id, LS_DROP_ACL);
        }
        stats::listener(id, LS_PASS_L7, 1);
        return xdp_action::XDP_PASS;
    }
    if pkt.ttl <= 1 {
        // Untranslated, so the stack's ICMP time exceeded names the VIP, not a backend.
        stats::global(GS_FIB_PASS);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: plain helper call. The coarse clock (one tick behind at most) is ample for
    // timeouts in seconds and avoids a clock-source read per packet.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let fkey = conntrack::key(
        pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
    );
    let (slot, be) = match conntrack::lookup(&fkey, pkt, meta.idle_timeout, now) {
        Some(slot) => match BACKENDS.get(slot) {
            Some(be) => (slot, *be),
            None => return drop(id, LS_DROP_NO_BACKEND),
        },
        None => {
            // Only a SYN opens a TCP flow; anything else mid-stream is unknown here.
            if pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                return drop(id, LS_DROP_NO_FLOW);
            }
            if !acl::allowed(meta, pkt) {
                return drop(id, LS_DROP_ACL);
            }
            let Some(slot) = sched::pick(ctx, meta, pkt, now) else {
                return drop(id, LS_DROP_NO_BACKEND);
            };
            let Some(be) = BACKENDS.get(slot).copied() else {
                return drop(id, LS_DROP_NO_BACKEND);
            };
            conntrack::create(&fkey, id, slot, &be, pkt, now);
            stats::listener(id, LS_NEW_FLOWS, 1);
            stats::backend(slot, BS_NEW_FLOWS, 1);
            (slot, be)
        }
    };
    if meta.persistence_timeout > 0 {
        sched::persist(meta, pkt, slot, now);
    }
    stats::backend_packet(slot, BS_PACKETS, pkt.len);
    if nat::rewrite(ctx, pkt, End::Dst, be.addr, be.port).is_none() {
        return drop(id, LS_DROP_NO_FLOW);
    }
    nat::forward(ctx, pkt, Some((slot, now)))
}

/// Backend → client: undo the DNAT so the client sees the VIP and listener port.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &mut Pkt, rev: &RevFlowEntry) -> u32 {
    stats::global(GS_REVERSE_NAT);
    stats::listener_packet(rev.listener, LS_REPLY_PACKETS, pkt.len);
    stats::backend_packet(rev.backend, BS_REPLY_PACKETS, pkt.len);
    // SAFETY: plain helper call. The coarse clock (one tick behind at most) is ample for
    // timeouts in seconds and avoids a clock-source read per packet.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let fkey = conntrack::key(
        pkt.family, pkt.proto, pkt.dst, rev.vip, pkt.dport, rev.vport,
    );
    conntrack::reply(&fkey, pkt.proto, pkt.tcp_flags, now);
    if nat::rewrite(ctx, pkt, End::Src, rev.vip, rev.vport).is_none() {
        return xdp_action::XDP_DROP;
    }
    nat::forward(ctx, pkt, None)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
