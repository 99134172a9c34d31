//! Closes established TCP flows that stayed idle for their listener's `EstablishedTimeout`:
//! a RST to the client (from the VIP and listener port) and one to the backend (from the
//! client), each with the exact sequence number its receiver expects (the kernel records the
//! client's numbers per flow), then the flow is forgotten (B12.3).
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use aya::maps::MapError;
use etherparse::{IpNumber, Ipv4Header, Ipv6Header, TcpHeader};
use slb_common::*;

use super::{image::words_addr, sync::Sync, DataplaneError};

/// The flow's endpoints and what each RST must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleFlow {
    pub key: FlowKey,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: SocketAddr,
    pub entry: FlowEntry,
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds, the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Sync {
    /// Established, not closing TCP flows idle for longer than their listener's timeout.
    pub fn idle_tcp_flows(&self, now_ns: u64) -> Result<Vec<IdleFlow>, DataplaneError> {
        let timeouts: BTreeMap<u32, u64> = self
            .listener_metas()
            .map(|m| (m.id, u64::from(m.idle_timeout) * 1_000_000_000))
            .collect();
        let mut out = Vec::new();
        for kv in self.maps.flows.iter() {
            let (key, entry) = match kv {
                Ok(kv) => kv,
                // Evicted between listing and lookup.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(DataplaneError::Map {
                        name: MAP_FLOWS,
                        source,
                    })
                }
            };
            let established = entry.state & (FS_ESTABLISHED | FS_CLOSING) == FS_ESTABLISHED;
            let Some(timeout) = timeouts.get(&entry.listener) else {
                continue;
            };
            if key.proto != PROTO_TCP
                || !established
                || now_ns.saturating_sub(entry.last_seen_ns) <= *timeout
            {
                continue;
            }
            let be = self
                .maps
                .backends
                .get(&entry.backend, 0)
                .map_err(|source| DataplaneError::Map {
                    name: MAP_BACKENDS,
                    source,
                })?;
            out.push(IdleFlow {
                key,
                client: SocketAddr::new(words_addr(&key.src, key.family), u16::from_be(key.sport)),
                vip: SocketAddr::new(words_addr(&key.dst, key.family), u16::from_be(key.dport)),
                backend: SocketAddr::new(words_addr(&be.addr, be.family), u16::from_be(be.port)),
                entry,
            });
        }
        Ok(out)
    }

    /// Removes a flow and its reverse entry and releases its connection count.
    pub fn forget_flow(&mut self, f: &IdleFlow) -> Result<(), DataplaneError> {
        let map_err = |name| move |source| DataplaneError::Map { name, source };
        let ignore_missing = |r: Result<(), MapError>, name| match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map { name, source }),
        };
        ignore_missing(self.maps.flows.remove(&f.key), MAP_FLOWS)?;
        let rev = FlowKey {
            src: crate::dataplane::image::addr_words(f.backend.ip()).0,
            dst: f.key.src,
            sport: f.backend.port().to_be(),
            dport: f.key.sport,
            proto: f.key.proto,
            family: f.key.family,
            _pad: [0; 2],
        };
        ignore_missing(self.maps.rev_flows.remove(&rev), MAP_REV_FLOWS)?;
        if f.entry.state & FS_COUNTED != 0 {
            // The kernel adds atomically; this read-modify-write can race with it, which at
            // worst leaves the count one off until the backend's flows drain.
            let n = self
                .maps
                .backend_conns
                .get(&f.entry.backend, 0)
                .map_err(map_err(MAP_BACKEND_CONNS))?;
            self.maps
                .backend_conns
                .set(f.entry.backend, n.saturating_sub(1), 0)
                .map_err(map_err(MAP_BACKEND_CONNS))?;
        }
        Ok(())
    }
}

/// Raw sockets for sending crafted RSTs, created in the agent's network namespace.
pub struct RstSender {
    v4: OwnedFd,
    v6: OwnedFd,
}

fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; IPPROTO_RAW implies that we supply the IP header.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RstSender {
    pub fn new() -> io::Result<Self> {
        Ok(RstSender {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6)?,
        })
    }

    /// Sends a bare RST from `src` to `dst` with sequence number `seq`.
    pub fn send(&self, src: SocketAddr, dst: SocketAddr, seq: u32) -> io::Result<()> {
        let mut tcp = TcpHeader::new(src.port(), dst.port(), seq, 0);
        tcp.rst = true;
        let mut pkt = Vec::with_capacity(60);
        let invalid =
            |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let rc = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4Header::new(20, 64, IpNumber::TCP, s.octets(), d.octets())
                    .map_err(|e| invalid(&e))?;
                ip.header_checksum = ip.calc_header_checksum();
                tcp.checksum = tcp.calc_checksum_ipv4(&ip, &[]).map_err(|e| invalid(&e))?;
                pkt.extend_from_slice(&ip.to_bytes());
                pkt.extend_from_slice(&tcp.to_bytes());
                // SAFETY: zeroed sockaddr_in is valid; fields set below.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(d.octets());
                // SAFETY: buffer and address are valid for the call.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: 20,
                    next_header: IpNumber::TCP,
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                };
                tcp.checksum = tcp.calc_checksum_ipv6(&ip, &[]).map_err(|e| invalid(&e))?;
                pkt.extend_from_slice(&ip.to_bytes());
                pkt.extend_from_slice(&tcp.to_bytes());
                // SAFETY: zeroed sockaddr_in6 is valid; fields set below.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = d.octets();
                // SAFETY: buffer and address are valid for the call.
                unsafe {
                    libc::sendto(
                        self.v6.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
            _ => return Err(invalid(&"mixed address families")),
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
