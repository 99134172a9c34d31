//! Address/port rewriting with incremental checksums, and next-hop forwarding by FIB lookup.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use slb_common::*;

use crate::{
    csum,
    maps::{FIB_PARAMS, NEXTHOPS},
    parse::{ptr_at, Pkt},
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which end of the packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

#[inline(always)]
fn addr_bytes(a: &[u32; 4]) -> [u8; 16] {
    let (w, x, y, z) = (
        a[0].to_ne_bytes(),
        a[1].to_ne_bytes(),
        a[2].to_ne_bytes(),
        a[3].to_ne_bytes(),
    );
    [
        w[0], w[1], w[2], w[3], x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3], z[0], z[1], z[2],
        z[3],
    ]
}

/// Rewrites one end's address and port, fixing the IPv4 header and L4 checksums. Returns
/// `None` if the packet is shorter than its headers (cannot happen after `parse`).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &mut Pkt, end: End, addr: [u32; 4], port: u16) -> Option<()> {
    let (old_addr, old_port) = match end {
        End::Src => (pkt.src, pkt.sport),
        End::Dst => (pkt.dst, pkt.dport),
    };
    let words = if pkt.family == FAMILY_V4 { 1 } else { 4 };
    if pkt.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3)?;
        // SAFETY: bounds checked.
        unsafe {
            let b = addr[0].to_ne_bytes();
            match end {
                End::Src => (*ip).src_addr = b,
                End::Dst => (*ip).dst_addr = b,
            }
            let c = csum::replace4(u16::from_ne_bytes((*ip).check), old_addr[0], addr[0]);
            (*ip).check = c.to_ne_bytes();
        }
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3)?;
        // SAFETY: bounds checked.
        unsafe {
            match end {
                End::Src => (*ip).src_addr = addr_bytes(&addr),
                End::Dst => (*ip).dst_addr = addr_bytes(&addr),
            }
        }
    }
    let port_off = if end == End::Src { 0 } else { 2 };
    let p = ptr_at::<[u8; 2]>(ctx, pkt.l4 + port_off)?;
    // SAFETY: bounds checked.
    unsafe { *p = port.to_ne_bytes() };
    let check_off = if pkt.proto == PROTO_TCP { 16 } else { 6 };
    let c = ptr_at::<[u8; 2]>(ctx, pkt.l4 + check_off)?;
    // SAFETY: bounds checked.
    unsafe {
        let old = u16::from_ne_bytes(*c);
        // An IPv4 UDP checksum of zero means "none" and stays so.
        if !(pkt.proto == PROTO_UDP && pkt.family == FAMILY_V4 && old == 0) {
            let mut n = csum::replace_addr(old, &old_addr, &addr, words);
            n = csum::replace2(n, old_port, port);
            if pkt.proto == PROTO_UDP && n == 0 {
                n = 0xffff;
            }
            *c = n.to_ne_bytes();
        }
    }
    match end {
        End::Src => {
            pkt.src = addr;
            pkt.sport = port;
        }
        End::Dst => {
            pkt.dst = addr;
            pkt.dport = port;
        }
    }
    Some(())
}

/// How long a FIB answer for a backend is reused: route or neighbour changes reach new
/// packets within this time.
const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// The FIB's last answer for one backend slot (per CPU), so the hit path skips the lookup.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The backend address and ingress interface it was looked up for: a slot reused for
    /// another backend, or a packet from another interface, looks up again.
    addr: [u32; 4],
    expires_ns: u64,
    in_ifindex: u32,
    out_ifindex: u32,
    /// Largest L3 length the FIB accepted (it checks the MTU); longer packets look up again.
    max_len: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
}

#[inline(always)]
pub fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    // Word by word: an array comparison compiles to a call of the BPF `bcmp` byte loop.
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// L3 length of the packet as the FIB's MTU check wants it (the whole IP packet).
#[inline(always)]
fn l3_len(ctx: &XdpContext, pkt: &Pkt) -> Option<u16> {
    if pkt.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3)?;
        // SAFETY: bounds checked.
        Some(u16::from_be_bytes(unsafe { (*ip).tot_len }))
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3)?;
        // SAFETY: bounds checked.
        let payload = u16::from_be_bytes(unsafe { (*ip).payload_len });
        Some(payload.saturating_add(Ipv6Hdr::LEN as u16))
    }
}

/// Sends the (already translated) packet towards its destination: MACs from the FIB, TTL
/// decremented, `XDP_TX` out of the ingress interface or `XDP_REDIRECT` to another. An
/// unresolved neighbour goes to the kernel stack, which resolves it and forwards the packet.
/// With `cache` (backend slot, now) the FIB answer for that backend is reused for
/// `NEXTHOP_TTL_NS`.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Pkt, cache: Option<(u32, u64)>) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(len) = l3_len(ctx, pkt) else {
        return xdp_action::XDP_DROP;
    };
    if let Some((slot, now)) = cache {
        if let Some(h) = NEXTHOPS.get_ptr(slot) {
            // SAFETY: per-CPU map value, copied out at once.
            let h = unsafe { *h };
            if now < h.expires_ns
                && h.in_ifindex == ingress
                && len <= h.max_len
                && same_addr(&h.addr, &pkt.dst)
            {
                return send(ctx, pkt, ingress, h.out_ifindex, &h.smac, &h.dmac);
            }
        }
    }
    // A per-CPU scratch value rather than the stack: the stack has no room for it, and zeroing
    // it there compiles to a BPF `memset` byte loop. Every input field the helper reads
    // without flags is written below.
    let Some(p) = FIB_PARAMS.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU map value, no concurrent user.
    let p = unsafe { &mut *p };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.ifindex = ingress;
    p.__bindgen_anon_1.tot_len = len;
    p.__bindgen_anon_5.tbid = 0;
    if pkt.family == FAMILY_V4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, pkt.l3) else {
            return xdp_action::XDP_DROP;
        };
        p.family = AF_INET;
        // SAFETY: bounds checked; writing plain union fields.
        unsafe {
            p.__bindgen_anon_2.tos = (*ip).tos;
            p.__bindgen_anon_3.ipv4_src = pkt.src[0];
            p.__bindgen_anon_4.ipv4_dst = pkt.dst[0];
        }
    } else {
        p.family = AF_INET6;
        // SAFETY: writing plain union fields.
        unsafe {
            p.__bindgen_anon_2.flowinfo = 0;
            p.__bindgen_anon_3.ipv6_src = pkt.src;
            p.__bindgen_anon_4.ipv6_dst = pkt.dst;
        }
    }
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_BLACKHOLE
        | BPF_FIB_LKUP_RET_UNREACHABLE
        | BPF_FIB_LKUP_RET_PROHIBIT
        | BPF_FIB_LKUP_RET_FWD_DISABLED => {
            stats::global(GS_FIB_DROP);
            return xdp_action::XDP_DROP;
        }
        _ => {
            stats::global(GS_FIB_PASS);
            return xdp_action::XDP_PASS;
        }
    }
    if let Some((slot, now)) = cache {
        if let Some(h) = NEXTHOPS.get_ptr_mut(slot) {
            // SAFETY: per-CPU map value, no concurrent user.
            let h = unsafe { &mut *h };
            // A shorter packet's answer must not lower what a longer one already proved.
            let proven = if h.expires_ns > now && same_addr(&h.addr, &pkt.dst) {
                h.max_len
            } else {
                0
            };
            h.addr = pkt.dst;
            h.expires_ns = now + NEXTHOP_TTL_NS;
            h.in_ifindex = ingress;
            h.out_ifindex = p.ifindex;
            h.max_len = if len > proven { len } else { proven };
            copy_mac(&mut h.smac, &p.smac);
            copy_mac(&mut h.dmac, &p.dmac);
        }
    }
    send(ctx, pkt, ingress, p.ifindex, &p.smac, &p.dmac)
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Pkt,
    ingress: u32,
    out: u32,
    smac: &[u8; 6],
    dmac: &[u8; 6],
) -> u32 {
    if !decrement_ttl(ctx, pkt) {
        // TTL exhausted: the stack answers with ICMP time exceeded.
        stats::global(GS_FIB_PASS);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked.
    unsafe {
        copy_mac(&mut (*eth).dst_addr, dmac);
        copy_mac(&mut (*eth).src_addr, smac);
    }
    if out == ingress {
        xdp_action::XDP_TX
    } else {
        // SAFETY: helper call with a plain ifindex.
        unsafe { bpf_redirect(out, 0) as u32 }
    }
}

/// Byte stores instead of an array copy, which compiles to a call of the BPF `memmove` loop.
#[inline(always)]
fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    for i in 0..6 {
        // SAFETY: `i < 6`, within both arrays.
        unsafe { core::ptr::write_volatile(&mut dst[i], src[i]) };
    }
}

#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, pkt: &Pkt) -> bool {
    if pkt.family == FAMILY_V4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, pkt.l3) else {
            return false;
        };
        // SAFETY: bounds checked.
        unsafe {
            let ttl = (*ip).ttl;
            if ttl <= 1 {
                return false;
            }
            let old = u16::from_ne_bytes([ttl, (*ip).proto]);
            let new = u16::from_ne_bytes([ttl - 1, (*ip).proto]);
            (*ip).ttl = ttl - 1;
            (*ip).check = csum::replace2(u16::from_ne_bytes((*ip).check), old, new).to_ne_bytes();
        }
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, pkt.l3) else {
            return false;
        };
        // SAFETY: bounds checked.
        unsafe {
            if (*ip).hop_limit <= 1 {
                return false;
            }
            (*ip).hop_limit -= 1;
        }
    }
    true
}
