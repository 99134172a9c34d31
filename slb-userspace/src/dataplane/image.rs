//! The logical content of the maps for a configuration: listeners with their scheduling tables
//! in terms of backend addresses, and ACLs by name. `sync` assigns slots and writes it;
//! `slb simulate` and `slb check-config` read it directly, so they see the same tables.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use slb_common::*;

use super::{maglev, sequence};
use crate::config::{
    Acl, AclType, Config, GroupRef, InstanceStatus, Listener, ListenerStatus, LoadBalancer, Member,
    MemberRole, Protocol, Scheduler,
};

/// A backend as the data plane knows it: one slot per distinct address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr(pub SocketAddr);

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub backend: BackendAddr,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerImage {
    /// `<LoadBalancerId>/<protocol>/<port>`, for humans.
    pub name: String,
    pub flags: u32,
    pub scheduler: u32,
    pub acl: Option<String>,
    pub legacy_acl: Option<String>,
    pub persistence_timeout: u32,
    pub idle_timeout: u32,
    /// What `SLAB` holds for this listener (see `ListenerMeta::table_off`). Shared by the
    /// listeners with the same group, scheduler and weights.
    pub table: Arc<Vec<TableEntry>>,
    /// The distinct members with weight > 0, in configuration order (`ListenerMeta::members_len`).
    pub members: Arc<Vec<TableEntry>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub listeners: BTreeMap<ListenerKey, ListenerImage>,
    /// ACL name → entries; legacy white lists are named `legacy:<LoadBalancerId>:<port>`.
    pub acls: BTreeMap<String, Vec<IpNet>>,
}

/// Address words in network order as the kernel reads them, and the family.
pub fn addr_words(addr: IpAddr) -> ([u32; 4], u8) {
    match addr {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

pub fn words_addr(words: &[u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

pub fn listener_key(vip: IpAddr, port: u16, proto: u8) -> ListenerKey {
    let (addr, family) = addr_words(vip);
    ListenerKey {
        addr,
        port: port.to_be(),
        proto,
        family,
    }
}

fn scheduler_code(s: Scheduler) -> u32 {
    match s {
        Scheduler::Wrr => SCHED_WRR,
        Scheduler::Rr => SCHED_RR,
        Scheduler::Wlc => SCHED_WLC,
        Scheduler::Sch => SCHED_SCH,
        Scheduler::Tch => SCHED_TCH,
        Scheduler::Qch => SCHED_QCH,
    }
}

/// The table for one listener. Members with weight 0 or marked down are left out of rings and
/// sequences (the kernel also checks both, for the time until the table is rewritten);
/// master/slave tables keep both members in order so failover needs no rewrite (B4.6).
pub fn table(scheduler: u32, members: &[Member], down: &BTreeSet<BackendAddr>) -> Vec<TableEntry> {
    let addr = |m: &Member| BackendAddr(SocketAddr::new(m.addr, m.port));
    if scheduler == SCHED_MASTER_SLAVE {
        let mut ms: Vec<&Member> = members.iter().collect();
        ms.sort_by_key(|m| m.role != MemberRole::Master);
        return ms
            .into_iter()
            .map(|m| TableEntry {
                backend: addr(m),
                weight: m.weight.into(),
            })
            .collect();
    }
    let live: Vec<TableEntry> = members
        .iter()
        .filter(|m| m.weight > 0 && !down.contains(&addr(m)))
        .map(|m| TableEntry {
            backend: addr(m),
            weight: m.weight.into(),
        })
        .collect();
    match scheduler {
        SCHED_SCH | SCHED_TCH | SCHED_QCH => {
            let names: Vec<String> = live.iter().map(|e| e.backend.to_string()).collect();
            let ring: Vec<maglev::RingMember> = live
                .iter()
                .zip(&names)
                .enumerate()
                .map(|(i, (e, name))| maglev::RingMember {
                    name,
                    slot: i as u32,
                    weight: e.weight,
                })
                .collect();
            // The ring size follows a capacity that changes only when the member count crosses
            // a power of two (min 64), so adding or removing one backend keeps M and moves
            // only about 1/N of the keys (B5.8).
            let capacity = ring.len().next_power_of_two().max(64);
            maglev::build_for_capacity(&ring, capacity)
                .into_iter()
                .map(|i| live[i as usize].clone())
                .collect()
        }
        SCHED_WRR => {
            let weights: Vec<(u32, u32)> = live
                .iter()
                .enumerate()
                .map(|(i, e)| (i as u32, e.weight))
                .collect();
            sequence::smooth_wrr(&weights)
                .into_iter()
                .map(|i| live[i as usize].clone())
                .collect()
        }
        _ => live,
    }
}

fn protocol_code(p: Protocol) -> (u8, u32) {
    match p {
        Protocol::Tcp => (PROTO_TCP, 0),
        Protocol::Udp => (PROTO_UDP, 0),
        Protocol::Http | Protocol::Https => (PROTO_TCP, LF_L7),
    }
}

/// Tables (and member lists) already built in this image, by scheduler and live members:
/// listeners of one instance usually share a group, and a table takes O(members × length) to
/// build. Key: (scheduler, per member: address, weight, master?, down?).
type TableMemo = HashMap<
    (u32, Vec<(BackendAddr, u8, bool, bool)>),
    (Arc<Vec<TableEntry>>, Arc<Vec<TableEntry>>),
>;

fn listener_image(
    cfg: &Config,
    lb: &LoadBalancer,
    l: &Listener,
    down: &BTreeSet<BackendAddr>,
    acls: &mut BTreeMap<String, Vec<IpNet>>,
    memo: &mut TableMemo,
) -> ListenerImage {
    let l7 = protocol_code(l.protocol).1;
    let mut flags = l7;
    if l.status == ListenerStatus::Running {
        flags |= LF_RUNNING;
    }
    if lb.status == InstanceStatus::Active {
        flags |= LF_INSTANCE_ACTIVE;
    }
    let mut acl = None;
    if let Some(la) = &l.acl {
        // An ACL without entries forwards everything, white or black (B7.4).
        if let Some(a) = cfg.acls.iter().find(|a| a.acl_id == la.acl_id) {
            if !a.entries.is_empty() {
                flags |= match la.acl_type {
                    AclType::White => LF_ACL_WHITE,
                    AclType::Black => LF_ACL_BLACK,
                };
                acls.insert(
                    a.acl_id.clone(),
                    a.entries.iter().map(|e| e.entry).collect(),
                );
                acl = Some(a.acl_id.clone());
            }
        }
    }
    let mut legacy_acl = None;
    if let Some(items) = &l.access_control {
        // An open white list passes only its items; empty, it passes nobody (B7.8).
        flags |= LF_LEGACY_WHITE;
        let name = format!("legacy:{}:{}", lb.load_balancer_id, l.listener_port);
        acls.insert(name.clone(), items.clone());
        legacy_acl = Some(name);
    }
    let scheduler = match l.group {
        GroupRef::MasterSlave(_) => SCHED_MASTER_SLAVE,
        _ => scheduler_code(l.scheduler),
    };
    let all = if l7 != 0 {
        Vec::new()
    } else {
        cfg.listener_members(lb, l)
    };
    let key = all
        .iter()
        .map(|m| {
            let b = BackendAddr(SocketAddr::new(m.addr, m.port));
            (b, m.weight, m.role == MemberRole::Master, down.contains(&b))
        })
        .collect();
    let (table, members) = memo
        .entry((scheduler, key))
        .or_insert_with(|| {
            let members = all
                .iter()
                .filter(|m| m.weight > 0)
                .map(|m| TableEntry {
                    backend: BackendAddr(SocketAddr::new(m.addr, m.port)),
                    weight: m.weight.into(),
                })
                .collect();
            (Arc::new(table(scheduler, &all, down)), Arc::new(members))
        })
        .clone();
    ListenerImage {
        name: format!(
            "{}/{}/{}",
            lb.load_balancer_id,
            protocol_name(l.protocol),
            l.listener_port
        ),
        flags,
        scheduler,
        acl,
        legacy_acl,
        persistence_timeout: if l7 != 0 { 0 } else { l.persistence_timeout },
        idle_timeout: match l.protocol {
            Protocol::Udp => UDP_IDLE_TIMEOUT_S,
            _ => l.established_timeout,
        },
        table,
        members,
    }
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Http => "http",
        Protocol::Https => "https",
    }
}

/// What one instance contributes to an image.
struct InstanceImage {
    lb: LoadBalancer,
    listeners: Vec<(ListenerKey, ListenerImage)>,
    acls: BTreeMap<String, Vec<IpNet>>,
}

/// The previous build's result per instance, so that a reload rebuilds only the instances whose
/// inputs changed (an API call usually touches one of many). Everything is rebuilt when the
/// inputs shared by all instances change: the server registry, the ACLs, the down set.
#[derive(Default)]
pub struct ImageCache {
    servers: BTreeMap<String, IpAddr>,
    acls: Vec<Acl>,
    down: BTreeSet<BackendAddr>,
    instances: HashMap<String, InstanceImage>,
}

impl Image {
    /// The image of a validated configuration, with `down` backends out of the tables.
    pub fn build(cfg: &Config, down: &BTreeSet<BackendAddr>) -> Image {
        Self::build_cached(cfg, down, &mut ImageCache::default())
    }

    /// As [`Image::build`], reusing what `cache` holds from the previous build and leaving
    /// this build's result there.
    pub fn build_cached(
        cfg: &Config,
        down: &BTreeSet<BackendAddr>,
        cache: &mut ImageCache,
    ) -> Image {
        if cache.servers != cfg.servers || cache.acls != cfg.acls || cache.down != *down {
            *cache = ImageCache {
                servers: cfg.servers.clone(),
                acls: cfg.acls.clone(),
                down: down.clone(),
                instances: HashMap::new(),
            };
        }
        let mut image = Image::default();
        let mut memo = TableMemo::new();
        let mut instances = HashMap::with_capacity(cfg.load_balancers.len());
        for lb in &cfg.load_balancers {
            let inst = match cache.instances.remove(&lb.load_balancer_id) {
                Some(prev) if prev.lb == *lb => prev,
                _ => {
                    let mut acls = BTreeMap::new();
                    let listeners = lb
                        .listeners
                        .iter()
                        .map(|l| {
                            let proto = protocol_code(l.protocol).0;
                            let key = listener_key(lb.address, l.listener_port, proto);
                            (key, listener_image(cfg, lb, l, down, &mut acls, &mut memo))
                        })
                        .collect();
                    InstanceImage {
                        lb: lb.clone(),
                        listeners,
                        acls,
                    }
                }
            };
            image.listeners.extend(inst.listeners.iter().cloned());
            image
                .acls
                .extend(inst.acls.iter().map(|(k, v)| (k.clone(), v.clone())));
            instances.insert(lb.load_balancer_id.clone(), inst);
        }
        cache.instances = instances;
        image
    }

    /// Every backend some listener's table refers to. Tables hold only members, except that a
    /// master/slave table also keeps a weight-0 member; walking the (long) rings and sequences
    /// of every listener would cost millions of inserts at scale, and listeners sharing a
    /// group share their lists, which are walked once.
    pub fn backends(&self) -> BTreeSet<BackendAddr> {
        let mut seen = HashSet::new();
        let mut out = BTreeSet::new();
        for l in self.listeners.values() {
            if l.scheduler == SCHED_MASTER_SLAVE && seen.insert(Arc::as_ptr(&l.table)) {
                out.extend(l.table.iter().map(|e| e.backend));
            }
            if seen.insert(Arc::as_ptr(&l.members)) {
                out.extend(l.members.iter().map(|e| e.backend));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn cfg(weight: u8, acl_entry: &str) -> Config {
        let mut t = format!(
            "[[Acls]]\nAclId = \"nacl-1\"\nAclEntrys = [ {{ entry = \"{acl_entry}\" }} ]\n"
        );
        for (i, w) in [(1, weight), (2, 100)] {
            t.push_str(&format!(
                "[[LoadBalancers]]\nLoadBalancerId = \"lb-{i}\"\nAddress = \"10.0.{i}.1\"\n\
                 BackendServers = [ {{ ServerId = \"10.1.{i}.1\", Weight = {w} }}, {{ ServerId = \"10.1.{i}.2\" }} ]\n\
                 [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 8080\n\
                 AclStatus = \"on\"\nAclId = \"nacl-1\"\nAclType = \"white\"\n\
                 [[LoadBalancers.Listeners]]\nListenerProtocol = \"udp\"\nListenerPort = 53\nBackendServerPort = 53\nScheduler = \"sch\"\n"
            ));
        }
        config::parse(&t, "t.toml").unwrap()
    }

    fn table_of(image: &Image, lb: u8) -> &Arc<Vec<TableEntry>> {
        let key = listener_key(IpAddr::from([10, 0, lb, 1]), 80, PROTO_TCP);
        &image.listeners[&key].table
    }

    /// A cached build is the image a fresh build makes, whatever changed; unchanged instances
    /// keep their very tables (which is what makes a reload cheap).
    #[test]
    fn cached_build_equals_a_fresh_build() {
        let mut cache = ImageCache::default();
        let none = BTreeSet::new();
        let first = Image::build_cached(&cfg(100, "192.0.2.0/24"), &none, &mut cache);
        assert_eq!(first, Image::build(&cfg(100, "192.0.2.0/24"), &none));
        let weights = cfg(50, "192.0.2.0/24");
        let second = Image::build_cached(&weights, &none, &mut cache);
        assert_eq!(second, Image::build(&weights, &none));
        assert_ne!(table_of(&second, 1), table_of(&first, 1));
        assert!(Arc::ptr_eq(table_of(&second, 2), table_of(&first, 2)));
        let acl = cfg(50, "198.51.100.0/24");
        assert_eq!(
            Image::build_cached(&acl, &none, &mut cache),
            Image::build(&acl, &none)
        );
        let down = BTreeSet::from([BackendAddr("10.1.2.1:8080".parse().unwrap())]);
        let third = Image::build_cached(&acl, &down, &mut cache);
        assert_eq!(third, Image::build(&acl, &down));
        assert_eq!(
            table_of(&third, 2)
                .iter()
                .filter(|e| e.backend == BackendAddr("10.1.2.1:8080".parse().unwrap()))
                .count(),
            0
        );
    }
}
