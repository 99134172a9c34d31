//! Header parsing. Anything that cannot be a listener's packet is passed untouched; fragments
//! and IPv4 options addressed to a VIP are dropped (B12.6). Every outcome is counted.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use slb_common::*;

use crate::{maps::VIPS, stats};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A parsed TCP or UDP packet; addresses and ports as they sit in the packet (network order).
pub struct Pkt {
    pub l3: usize,
    pub l4: usize,
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP sequence and acknowledgment numbers (host order) and the segment's sequence space
    /// (payload bytes, plus one for SYN or FIN).
    pub seq: u32,
    pub ack: u32,
    pub seq_len: u32,
    pub len: u64,
}

/// Bounds-checked pointer into the packet: the only raw packet access in the program.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn pass(counter: u32) -> Result<Pkt, u32> {
    stats::global(counter);
    Err(xdp_action::XDP_PASS)
}

/// Drops the packet if it is addressed to a VIP, passes it otherwise.
#[inline(always)]
fn reject_if_vip(family: u8, dst: [u32; 4], counter: u32) -> Result<Pkt, u32> {
    let key = VipKey {
        addr: dst,
        family,
        _pad: [0; 3],
    };
    // SAFETY: map value is not dereferenced.
    if unsafe { VIPS.get(&key) }.is_some() {
        stats::global(counter);
        return Err(xdp_action::XDP_DROP);
    }
    pass(GS_PASS_NOT_LISTENER)
}

#[inline(always)]
fn word(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// `Ok` for a TCP/UDP packet worth a listener lookup, `Err(action)` otherwise.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Pkt, u32> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return pass(GS_TRUNCATED);
    };
    // SAFETY: bounds checked by `ptr_at`.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return pass(GS_TRUNCATED);
        };
        // SAFETY: bounds checked.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += VlanHdr::LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return pass(GS_PASS_UNSUPPORTED);
        }
    }
    let (family, proto, src, dst, l4, ttl, ip_payload) = match ether_type {
        ETH_P_IP => {
            let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
                return pass(GS_TRUNCATED);
            };
            // SAFETY: bounds checked.
            let ip = unsafe { &*ip };
            let dst = [word(ip.dst_addr), 0, 0, 0];
            if ip.vihl >> 4 != 4 || ip.vihl & 0xf < 5 {
                return pass(GS_MALFORMED);
            }
            if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
                return reject_if_vip(FAMILY_V4, dst, GS_FRAGMENT);
            }
            if ip.vihl & 0xf != 5 {
                return reject_if_vip(FAMILY_V4, dst, GS_IP_OPTIONS);
            }
            let src = [word(ip.src_addr), 0, 0, 0];
            let ip_payload = u16::from_be_bytes(ip.tot_len).saturating_sub(Ipv4Hdr::LEN as u16);
            (
                FAMILY_V4,
                ip.proto,
                src,
                dst,
                l3 + Ipv4Hdr::LEN,
                ip.ttl,
                ip_payload,
            )
        }
        ETH_P_IPV6 => {
            let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
                return pass(GS_TRUNCATED);
            };
            // SAFETY: bounds checked.
            let ip = unsafe { &*ip };
            let a = ip.src_addr;
            let b = ip.dst_addr;
            let src = [
                word([a[0], a[1], a[2], a[3]]),
                word([a[4], a[5], a[6], a[7]]),
                word([a[8], a[9], a[10], a[11]]),
                word([a[12], a[13], a[14], a[15]]),
            ];
            let dst = [
                word([b[0], b[1], b[2], b[3]]),
                word([b[4], b[5], b[6], b[7]]),
                word([b[8], b[9], b[10], b[11]]),
                word([b[12], b[13], b[14], b[15]]),
            ];
            if ip.vcf[0] >> 4 != 6 {
                return pass(GS_MALFORMED);
            }
            match ip.next_hdr {
                IPPROTO_FRAGMENT => return reject_if_vip(FAMILY_V6, dst, GS_FRAGMENT),
                PROTO_TCP | PROTO_UDP | IPPROTO_ICMPV6 => {}
                // Hop-by-hop, routing, destination options and the rest: not parsed further.
                _ => return pass(GS_PASS_UNSUPPORTED),
            }
            let ip_payload = u16::from_be_bytes(ip.payload_len);
            (
                FAMILY_V6,
                ip.next_hdr,
                src,
                dst,
                l3 + Ipv6Hdr::LEN,
                ip.hop_limit,
                ip_payload,
            )
        }
        _ => return pass(GS_PASS_NOT_LISTENER),
    };
    let mut seq = 0;
    let mut ack = 0;
    let mut seq_len = 0;
    let (sport, dport, tcp_flags) = match proto {
        PROTO_TCP => {
            let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4) else {
                return pass(GS_TRUNCATED);
            };
            let Some(off_flags) = ptr_at::<[u8; 2]>(ctx, l4 + 12) else {
                return pass(GS_TRUNCATED);
            };
            // SAFETY: bounds checked.
            let (tcp, [off, flags]) = unsafe { (&*tcp, *off_flags) };
            seq = u32::from_be_bytes(tcp.seq);
            ack = u32::from_be_bytes(tcp.ack_seq);
            let hdr = u32::from(off >> 4) * 4;
            seq_len = u32::from(ip_payload).saturating_sub(hdr)
                + u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
            (
                u16::from_ne_bytes(tcp.source),
                u16::from_ne_bytes(tcp.dest),
                flags,
            )
        }
        PROTO_UDP => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, l4) else {
                return pass(GS_TRUNCATED);
            };
            // SAFETY: bounds checked.
            unsafe {
                (
                    u16::from_ne_bytes((*udp).src),
                    u16::from_ne_bytes((*udp).dst),
                    0,
                )
            }
        }
        _ => return pass(GS_PASS_NOT_LISTENER),
    };
    Ok(Pkt {
        l3,
        l4,
        family,
        proto,
        src,
        dst,
        sport,
        dport,
        tcp_flags,
        ttl,
        seq,
        ack,
        seq_len,
        len,
    })
}
