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

use crate::{csum, parse::ptr_at, parse::Pkt, stats};

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

/// Sends the (already translated) packet towards its destination: MACs from the FIB, TTL
/// decremented, `XDP_TX` out of the ingress interface or `XDP_REDIRECT` to another. An
/// unresolved neighbour goes to the kernel stack, which resolves it and forwards the packet.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Pkt) -> u32 {
    // SAFETY: plain C struct, all-zero is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.family == FAMILY_V4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, pkt.l3) else {
            return xdp_action::XDP_DROP;
        };
        p.family = AF_INET;
        // SAFETY: bounds checked; writing plain union fields.
        unsafe {
            p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
            p.__bindgen_anon_2.tos = (*ip).tos;
            p.__bindgen_anon_3.ipv4_src = pkt.src[0];
            p.__bindgen_anon_4.ipv4_dst = pkt.dst[0];
        }
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, pkt.l3) else {
            return xdp_action::XDP_DROP;
        };
        p.family = AF_INET6;
        // SAFETY: as above.
        unsafe {
            p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).payload_len);
            p.__bindgen_anon_3.ipv6_src = pkt.src;
            p.__bindgen_anon_4.ipv6_dst = pkt.dst;
        }
    }
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
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
        (*eth).dst_addr = p.dmac;
        (*eth).src_addr = p.smac;
    }
    if p.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: helper call with a plain ifindex.
        unsafe { bpf_redirect(p.ifindex, 0) as u32 }
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
