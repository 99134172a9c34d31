//! Shared test support: a readable packet notation for fixtures and an independent decoder.
//!
//! Notation: layers joined by `/`, each `name(key=value,...)`:
//! `eth(src=02:00:00:00:00:aa,dst=02:00:00:00:00:01)` (both optional, these defaults),
//! `vlan(id=10)`, `ipv4(src=..,dst=..,ttl=64,id=0,df=0,mf=0,frag=0)`,
//! `ipv6(src=..,dst=..,hop=64)`, `tcp(sport=..,dport=..,flags=S|A|F|R|P,seq=0,ack=0,win=65535)`,
//! `udp(sport=..,dport=..,csum=1)` (`csum=0` leaves an IPv4 UDP checksum empty),
//! `payload(text)` or `hex(00ff..)`. Checksums are computed from scratch by etherparse, so an
//! expected packet written this way checks the program's incremental checksum updates.
pub mod api;
pub mod http_backend;

/// Privileged tests (BPF, namespaces) skip, saying why, when this is false.
pub fn is_root() -> bool {
    // SAFETY: plain libc call.
    unsafe { libc::geteuid() == 0 }
}

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{anyhow, bail, Context as _};
use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv6Header, NetSlice,
    SingleVlanHeader, SlicedPacket, TcpHeader, TransportSlice, UdpHeader, VlanId,
};

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
pub const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s}"))?;
    parts.try_into().map_err(|_| anyhow!("bad MAC {s}"))
}

pub fn hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("bad hex {s}")))
        .collect()
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Layer {
    name: String,
    args: BTreeMap<String, String>,
    raw: String,
}

fn layers(spec: &str) -> anyhow::Result<Vec<Layer>> {
    let mut out = Vec::new();
    for part in spec.split('/') {
        let part = part.trim();
        let (name, rest) = part
            .split_once('(')
            .ok_or_else(|| anyhow!("layer `{part}` needs (...)"))?;
        let raw = rest
            .strip_suffix(')')
            .ok_or_else(|| anyhow!("layer `{part}` needs a closing )"))?
            .to_string();
        let mut args = BTreeMap::new();
        if name != "payload" && name != "hex" {
            for kv in raw.split(',').filter(|s| !s.trim().is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("`{kv}` in `{part}` is not key=value"))?;
                args.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        out.push(Layer {
            name: name.trim().to_string(),
            args,
            raw,
        });
    }
    Ok(out)
}

fn arg<T: std::str::FromStr>(l: &Layer, k: &str, default: Option<T>) -> anyhow::Result<T> {
    match l.args.get(k) {
        Some(v) => v
            .parse()
            .map_err(|_| anyhow!("{}: bad value `{v}` for {k}", l.name)),
        None => default.ok_or_else(|| anyhow!("{}: missing {k}", l.name)),
    }
}

enum Ip {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

/// Builds a frame from the notation in the module docs.
pub fn build(spec: &str) -> anyhow::Result<Vec<u8>> {
    let ls = layers(spec)?;
    let mut i = 0;
    let (mut src_mac, mut dst_mac) = (CLIENT_MAC, LB_MAC);
    if ls.first().map(|l| l.name.as_str()) == Some("eth") {
        if let Some(s) = ls[0].args.get("src") {
            src_mac = mac(s)?;
        }
        if let Some(d) = ls[0].args.get("dst") {
            dst_mac = mac(d)?;
        }
        i = 1;
    }
    let mut vlan = None;
    if ls.get(i).map(|l| l.name.as_str()) == Some("vlan") {
        vlan = Some(arg::<u16>(&ls[i], "id", None)?);
        i += 1;
    }
    let ip_l = ls.get(i).ok_or_else(|| anyhow!("no IP layer"))?;
    i += 1;
    let l4 = ls.get(i);
    let payload: Vec<u8> = match ls.get(i + 1) {
        Some(p) if p.name == "payload" => p.raw.as_bytes().to_vec(),
        Some(p) if p.name == "hex" => hex(&p.raw)?,
        Some(p) => bail!("unexpected layer {}", p.name),
        None => Vec::new(),
    };
    let (proto, l4_len) = match l4.map(|l| l.name.as_str()) {
        Some("tcp") => (IpNumber::TCP, 20),
        Some("udp") => (IpNumber::UDP, 8),
        _ => bail!("the layer after IP must be tcp or udp"),
    };
    let total = (l4_len + payload.len()) as u16;
    let mut ip = match ip_l.name.as_str() {
        "ipv4" => {
            let src: Ipv4Addr = arg(ip_l, "src", None)?;
            let dst: Ipv4Addr = arg(ip_l, "dst", None)?;
            let mut h = Ipv4Header::new(
                total,
                arg(ip_l, "ttl", Some(64))?,
                proto,
                src.octets(),
                dst.octets(),
            )?;
            h.identification = arg(ip_l, "id", Some(0))?;
            h.dont_fragment = arg::<u8>(ip_l, "df", Some(0))? == 1;
            h.more_fragments = arg::<u8>(ip_l, "mf", Some(0))? == 1;
            h.fragment_offset = IpFragOffset::try_new(arg(ip_l, "frag", Some(0))?)?;
            h.header_checksum = h.calc_header_checksum();
            Ip::V4(h)
        }
        "ipv6" => {
            let src: Ipv6Addr = arg(ip_l, "src", None)?;
            let dst: Ipv6Addr = arg(ip_l, "dst", None)?;
            Ip::V6(Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: total,
                next_header: proto,
                hop_limit: arg(ip_l, "hop", Some(64))?,
                source: src.octets(),
                destination: dst.octets(),
            })
        }
        other => bail!("unknown IP layer {other}"),
    };
    let l4 = l4.ok_or_else(|| anyhow!("no L4 layer"))?;
    let l4_bytes = if proto == IpNumber::TCP {
        let mut t = TcpHeader::new(
            arg(l4, "sport", None)?,
            arg(l4, "dport", None)?,
            arg(l4, "seq", Some(0))?,
            arg(l4, "win", Some(65535))?,
        );
        let flags: String = arg(l4, "flags", Some(String::new()))?;
        for f in flags.chars() {
            match f {
                'S' => t.syn = true,
                'A' => t.ack = true,
                'F' => t.fin = true,
                'R' => t.rst = true,
                'P' => t.psh = true,
                _ => bail!("unknown TCP flag {f}"),
            }
        }
        t.acknowledgment_number = arg(l4, "ack", Some(0))?;
        t.checksum = match &ip {
            Ip::V4(h) => t.calc_checksum_ipv4(h, &payload)?,
            Ip::V6(h) => t.calc_checksum_ipv6(h, &payload)?,
        };
        t.to_bytes().to_vec()
    } else {
        let mut u = UdpHeader {
            source_port: arg(l4, "sport", None)?,
            destination_port: arg(l4, "dport", None)?,
            length: total,
            checksum: 0,
        };
        let with_csum = arg::<u8>(l4, "csum", Some(1))? == 1;
        u.checksum = match &ip {
            Ip::V4(h) if with_csum => u.calc_checksum_ipv4(h, &payload)?,
            Ip::V4(_) => 0,
            Ip::V6(h) => u.calc_checksum_ipv6(h, &payload)?,
        };
        u.to_bytes().to_vec()
    };
    let ether_type = match ip {
        Ip::V4(_) => EtherType::IPV4,
        Ip::V6(_) => EtherType::IPV6,
    };
    let mut out = Vec::new();
    let eth_type = if vlan.is_some() {
        EtherType::VLAN_TAGGED_FRAME
    } else {
        ether_type
    };
    out.extend_from_slice(
        &Ethernet2Header {
            source: src_mac,
            destination: dst_mac,
            ether_type: eth_type,
        }
        .to_bytes(),
    );
    if let Some(id) = vlan {
        out.extend_from_slice(
            &SingleVlanHeader {
                pcp: Default::default(),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id)?,
                ether_type,
            }
            .to_bytes(),
        );
    }
    match &mut ip {
        Ip::V4(h) => out.extend_from_slice(&h.to_bytes()),
        Ip::V6(h) => out.extend_from_slice(&h.to_bytes()),
    }
    out.extend_from_slice(&l4_bytes);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// What an output frame says, decoded and checksum-verified independently of the program.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

pub fn decode_verified(frame: &[u8]) -> anyhow::Result<Decoded> {
    let p = SlicedPacket::from_ethernet(frame)?;
    let (src_mac, dst_mac) = match &p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => (e.source(), e.destination()),
        _ => bail!("not Ethernet II"),
    };
    let (src, dst, v4, v6) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            if h.calc_header_checksum() != h.header_checksum {
                bail!("IPv4 header checksum wrong");
            }
            (
                IpAddr::V4(h.source.into()),
                IpAddr::V4(h.destination.into()),
                Some(h),
                None,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            (
                IpAddr::V6(h.source.into()),
                IpAddr::V6(h.destination.into()),
                None,
                Some(h),
            )
        }
        _ => bail!("no IP header"),
    };
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let want = match (&v4, &v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(ip, t.payload())?,
                (_, Some(ip)) => h.calc_checksum_ipv6(ip, t.payload())?,
                _ => bail!("no IP header"),
            };
            if want != h.checksum {
                bail!("TCP checksum {:#06x}, expected {want:#06x}", h.checksum);
            }
            (h.source_port, h.destination_port)
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            if !(v4.is_some() && h.checksum == 0) {
                let want = match (&v4, &v6) {
                    (Some(ip), _) => h.calc_checksum_ipv4(ip, u.payload())?,
                    (_, Some(ip)) => h.calc_checksum_ipv6(ip, u.payload())?,
                    _ => bail!("no IP header"),
                };
                if want != h.checksum {
                    bail!("UDP checksum {:#06x}, expected {want:#06x}", h.checksum);
                }
            }
            (h.source_port, h.destination_port)
        }
        _ => bail!("no TCP/UDP header"),
    };
    Ok(Decoded {
        src,
        dst,
        sport,
        dport,
        src_mac,
        dst_mac,
    })
}
