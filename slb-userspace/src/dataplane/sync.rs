//! Writes an `Image` into the maps, touching only what changed: a listener's table is rewritten
//! only when its members, weights or health changed, and then into a fresh slab region that the
//! listener is switched to atomically, so the kernel never sees a half-written table.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use aya::maps::{lpm_trie::Key, MapData, MapError, PerCpuArray, PerCpuValues};
use ipnet::IpNet;
use slb_common::*;

use super::{
    image::{addr_words, words_addr, BackendAddr, Image, ListenerImage},
    maps::Maps,
    DataplaneError,
};

/// What one `apply` changed, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub listeners_added: usize,
    pub listeners_changed: usize,
    pub listeners_removed: usize,
    pub tables_written: usize,
    pub backends_added: usize,
    pub backends_released: usize,
    pub acl_entries_added: usize,
    pub acl_entries_removed: usize,
}

impl SyncReport {
    pub fn is_empty(&self) -> bool {
        *self == SyncReport::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    meta: ListenerMeta,
    table: Vec<SlabEntry>,
}

/// A slab region and how many listeners use it.
#[derive(Debug)]
struct Region {
    len: u32,
    refs: u32,
}

/// First-fit allocator over `SLAB`. Listeners with identical tables (an instance's listeners
/// usually share its group) share one region, counted by reference.
#[derive(Debug, Default)]
struct SlabAlloc {
    used: BTreeMap<u32, Region>,
    by_content: HashMap<Vec<SlabEntry>, u32>,
}

impl SlabAlloc {
    fn alloc(&mut self, len: u32) -> Result<u32, DataplaneError> {
        if len == 0 {
            return Ok(0);
        }
        let mut start = 0u32;
        for (&off, r) in &self.used {
            if off - start >= len {
                break;
            }
            start = off + r.len;
        }
        if SLAB_ENTRIES - start < len {
            return Err(DataplaneError::Full {
                what: "table slab",
                needed: len.into(),
                capacity: (SLAB_ENTRIES - self.used.values().map(|r| r.len).sum::<u32>()).into(),
            });
        }
        Ok(start)
    }

    /// The region holding `table`: an existing identical one, or a new one (`true`: it must be
    /// written).
    fn share(&mut self, table: &[SlabEntry]) -> Result<(u32, bool), DataplaneError> {
        if table.is_empty() {
            return Ok((0, false));
        }
        if let Some(&off) = self.by_content.get(table) {
            if let Some(r) = self.used.get_mut(&off) {
                r.refs += 1;
                return Ok((off, false));
            }
        }
        let off = self.alloc(table.len() as u32)?;
        self.adopt(off, table.to_vec());
        Ok((off, true))
    }

    /// Records a region found in the maps (a restarted agent) or just allocated.
    fn adopt(&mut self, off: u32, content: Vec<SlabEntry>) {
        if content.is_empty() {
            return;
        }
        match self.used.get_mut(&off) {
            Some(r) => r.refs += 1,
            None => {
                self.used.insert(
                    off,
                    Region {
                        len: content.len() as u32,
                        refs: 1,
                    },
                );
                self.by_content.insert(content, off);
            }
        }
    }

    fn release(&mut self, off: u32, len: u32) {
        if len == 0 {
            return;
        }
        if let Some(r) = self.used.get_mut(&off) {
            r.refs -= 1;
            if r.refs == 0 {
                self.used.remove(&off);
                self.by_content.retain(|_, o| *o != off);
            }
        }
    }
}

/// Stable 31-bit id of an ACL name (ids live in LPM keys; a name always maps to the same id,
/// so a restarted agent needs no table of them).
pub fn acl_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) | 1
}

pub struct Sync {
    pub maps: Maps,
    listener_ids: BTreeMap<ListenerKey, u32>,
    backend_slots: BTreeMap<BackendAddr, u32>,
    next_slot: u32,
    programmed: BTreeMap<ListenerKey, Programmed>,
    acls: BTreeMap<u32, BTreeSet<IpNet>>,
    vips: BTreeSet<VipKey>,
    slab: SlabAlloc,
    /// What each programmed listener was built from: an identical image next time means
    /// nothing of it can have changed (its backends keep their slots while it uses them).
    images: BTreeMap<ListenerKey, ListenerImage>,
    /// The non-zero entries of `PORT_LISTENERS`.
    ports: BTreeMap<u32, u32>,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// LPM key of one ACL entry: the ACL id as a full 32-bit prefix, then the network.
enum AclKey {
    V4(Key<AclV4>),
    V6(Key<AclV6>),
}

fn acl_key(id: u32, net: &IpNet) -> AclKey {
    let acl = id.to_be_bytes();
    let plen = 32 + u32::from(net.prefix_len());
    match net {
        IpNet::V4(n) => AclKey::V4(Key::new(
            plen,
            AclV4 {
                acl,
                addr: n.network().octets(),
            },
        )),
        IpNet::V6(n) => AclKey::V6(Key::new(
            plen,
            AclV6 {
                acl,
                addr: n.network().octets(),
            },
        )),
    }
}

/// Zeroes one slot of a per-CPU counter array on every CPU (a reused slot starts from zero).
fn zero_slot<T: aya::Pod + Default + Clone>(
    map: &mut PerCpuArray<MapData, T>,
    idx: u32,
    name: &'static str,
) -> Result<(), DataplaneError> {
    let ncpu = map.get(&idx, 0).map_err(map_err(name))?.len();
    let zero =
        PerCpuValues::try_from(vec![T::default(); ncpu]).map_err(|source| DataplaneError::Io {
            path: name.into(),
            source,
        })?;
    map.set(idx, zero, 0).map_err(map_err(name))
}

fn vip_key(k: &ListenerKey) -> VipKey {
    VipKey {
        addr: k.addr,
        family: k.family,
        _pad: [0; 3],
    }
}

impl Sync {
    /// Takes over maps, reading back whatever a previous agent programmed into them.
    pub fn adopt(maps: Maps) -> Result<Self, DataplaneError> {
        let mut s = Sync {
            maps,
            listener_ids: BTreeMap::new(),
            backend_slots: BTreeMap::new(),
            next_slot: 0,
            programmed: BTreeMap::new(),
            acls: BTreeMap::new(),
            vips: BTreeSet::new(),
            slab: SlabAlloc::default(),
            images: BTreeMap::new(),
            ports: BTreeMap::new(),
        };
        let listeners: Vec<(ListenerKey, ListenerMeta)> = s
            .maps
            .listeners
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(MAP_LISTENERS))?;
        for (key, meta) in listeners {
            let region = meta.table_len + meta.members_len;
            let mut table = Vec::with_capacity(region as usize);
            for i in 0..region {
                table.push(
                    s.maps
                        .slab
                        .get(&(meta.table_off + i), 0)
                        .map_err(map_err(MAP_SLAB))?,
                );
            }
            s.slab.adopt(meta.table_off, table.clone());
            // An agent of an earlier version left no slots; writing them is idempotent.
            s.write_slot(meta.id, ListenerSlot { key, meta })?;
            s.listener_ids.insert(key, meta.id);
            s.programmed.insert(key, Programmed { meta, table });
        }
        // Every port in use is written: a zero there would hide its listeners. An entry left
        // over from an interrupted apply is harmless: it only ever leads to a key comparison or
        // a `LISTENERS` lookup that finds nothing.
        let ports = s.wanted_ports(s.listener_ids.keys());
        s.sync_ports(ports)?;
        for key in s.maps.vips.keys() {
            s.vips.insert(key.map_err(map_err(MAP_VIPS))?);
        }
        for (slot, b) in s.maps.backends.iter().enumerate() {
            let b = b.map_err(map_err(MAP_BACKENDS))?;
            if b.in_use != 0 {
                let addr = words_addr(&b.addr, b.family);
                let addr = BackendAddr(std::net::SocketAddr::new(addr, u16::from_be(b.port)));
                s.backend_slots.insert(addr, slot as u32);
                s.next_slot = slot as u32 + 1;
            }
        }
        for key in s.maps.acl_v4.keys() {
            let key = key.map_err(map_err(MAP_ACL_V4))?;
            let d = key.data();
            let net = IpNet::new(d.addr.into(), (key.prefix_len() - 32) as u8);
            if let Ok(net) = net {
                s.acls
                    .entry(u32::from_be_bytes(d.acl))
                    .or_default()
                    .insert(net);
            }
        }
        for key in s.maps.acl_v6.keys() {
            let key = key.map_err(map_err(MAP_ACL_V6))?;
            let d = key.data();
            let net = IpNet::new(d.addr.into(), (key.prefix_len() - 32) as u8);
            if let Ok(net) = net {
                s.acls
                    .entry(u32::from_be_bytes(d.acl))
                    .or_default()
                    .insert(net);
            }
        }
        Ok(s)
    }

    pub fn backend_slot(&self, b: &BackendAddr) -> Option<u32> {
        self.backend_slots.get(b).copied()
    }

    pub fn listener_metas(&self) -> impl Iterator<Item = &ListenerMeta> {
        self.programmed.values().map(|p| &p.meta)
    }

    pub fn listener_id(&self, k: &ListenerKey) -> Option<u32> {
        self.listener_ids.get(k).copied()
    }

    /// Sets or clears a backend's health flag: a down backend gets no new flows (B4.15).
    pub fn set_down(&mut self, b: &BackendAddr, down: bool) -> Result<(), DataplaneError> {
        if let Some(slot) = self.backend_slot(b) {
            let v = if down { BACKEND_IS_DOWN } else { 0 };
            self.maps
                .backend_down
                .set(slot, v, 0)
                .map_err(map_err(MAP_BACKEND_DOWN))?;
        }
        Ok(())
    }

    fn alloc_slot(&mut self) -> Result<u32, DataplaneError> {
        let used: BTreeSet<u32> = self.backend_slots.values().copied().collect();
        // Circular allocation: a released slot is reused as late as possible, because flows
        // that were established to its old backend keep using it until they end.
        for i in 0..MAX_BACKENDS {
            let slot = (self.next_slot + i) % MAX_BACKENDS;
            if !used.contains(&slot) {
                self.next_slot = slot + 1;
                return Ok(slot);
            }
        }
        Err(DataplaneError::Full {
            what: "backend slots",
            needed: 1,
            capacity: MAX_BACKENDS.into(),
        })
    }

    fn write_slot(&mut self, id: u32, slot: ListenerSlot) -> Result<(), DataplaneError> {
        self.maps
            .listener_slots
            .set(id, slot, 0)
            .map_err(map_err(MAP_LISTENER_SLOTS))
    }

    /// `PORT_LISTENERS` for these listeners (each must have an id).
    fn wanted_ports<'a>(&self, keys: impl Iterator<Item = &'a ListenerKey>) -> BTreeMap<u32, u32> {
        let mut ports = BTreeMap::new();
        for key in keys {
            let id = self.listener_ids[key];
            ports
                .entry(port_index(key.proto, key.port))
                .and_modify(|v| *v = PORT_SHARED)
                .or_insert(id + 1);
        }
        ports
    }

    fn sync_ports(&mut self, wanted: BTreeMap<u32, u32>) -> Result<(), DataplaneError> {
        let cleared: Vec<u32> = self
            .ports
            .keys()
            .filter(|idx| !wanted.contains_key(idx))
            .copied()
            .collect();
        let changed = wanted
            .iter()
            .filter(|(idx, v)| self.ports.get(idx) != Some(v))
            .map(|(idx, v)| (*idx, *v));
        for (idx, v) in changed.chain(cleared.into_iter().map(|idx| (idx, 0))) {
            self.maps
                .port_listeners
                .set(idx, v, 0)
                .map_err(map_err(MAP_PORT_LISTENERS))?;
        }
        self.ports = wanted;
        Ok(())
    }

    fn alloc_listener_id(&self) -> Result<u32, DataplaneError> {
        let used: BTreeSet<u32> = self.listener_ids.values().copied().collect();
        (0..MAX_LISTENERS)
            .find(|i| !used.contains(i))
            .ok_or(DataplaneError::Full {
                what: "listener slots",
                needed: 1,
                capacity: MAX_LISTENERS.into(),
            })
    }

    fn acl_insert(&mut self, id: u32, net: &IpNet) -> Result<(), DataplaneError> {
        match acl_key(id, net) {
            AclKey::V4(k) => self
                .maps
                .acl_v4
                .insert(&k, 1, 0)
                .map_err(map_err(MAP_ACL_V4)),
            AclKey::V6(k) => self
                .maps
                .acl_v6
                .insert(&k, 1, 0)
                .map_err(map_err(MAP_ACL_V6)),
        }
    }

    fn acl_remove(&mut self, id: u32, net: &IpNet) -> Result<(), DataplaneError> {
        let (r, name) = match acl_key(id, net) {
            AclKey::V4(k) => (self.maps.acl_v4.remove(&k), MAP_ACL_V4),
            AclKey::V6(k) => (self.maps.acl_v6.remove(&k), MAP_ACL_V6),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    fn sync_acl(
        &mut self,
        id: u32,
        want: &BTreeSet<IpNet>,
        report: &mut SyncReport,
    ) -> Result<(), DataplaneError> {
        let have = self.acls.get(&id).cloned().unwrap_or_default();
        for net in want.difference(&have) {
            self.acl_insert(id, net)?;
            report.acl_entries_added += 1;
        }
        for net in have.difference(want) {
            self.acl_remove(id, net)?;
            report.acl_entries_removed += 1;
        }
        if want.is_empty() {
            self.acls.remove(&id);
        } else {
            self.acls.insert(id, want.clone());
        }
        Ok(())
    }

    /// Drops persistence entries of `listener` that point outside `usable` (B6.1: a removed,
    /// drained or unhealthy backend breaks persistence).
    fn prune_persistence(
        &mut self,
        listener: u32,
        usable: &BTreeSet<u32>,
    ) -> Result<(), DataplaneError> {
        let stale: Vec<PersistKey> = self
            .maps
            .persist
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.listener == listener && !usable.contains(&v.backend))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            match self.maps.persist.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DataplaneError::Map {
                        name: MAP_PERSIST,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Makes the maps hold `image`.
    pub fn apply(&mut self, image: &Image) -> Result<SyncReport, DataplaneError> {
        let mut report = SyncReport::default();
        // Backends first, so every table written below refers to a programmed slot.
        for b in image.backends() {
            if self.backend_slots.contains_key(&b) {
                continue;
            }
            let slot = self.alloc_slot()?;
            let (addr, family) = addr_words(b.0.ip());
            let rec = Backend {
                addr,
                port: b.0.port().to_be(),
                family,
                in_use: 1,
            };
            self.maps
                .backends
                .set(slot, rec, 0)
                .map_err(map_err(MAP_BACKENDS))?;
            // A new backend starts healthy (B8.15).
            self.maps
                .backend_down
                .set(slot, 0, 0)
                .map_err(map_err(MAP_BACKEND_DOWN))?;
            self.maps
                .backend_conns
                .set(slot, 0, 0)
                .map_err(map_err(MAP_BACKEND_CONNS))?;
            zero_slot(&mut self.maps.backend_stats, slot, MAP_BACKEND_STATS)?;
            self.backend_slots.insert(b, slot);
            report.backends_added += 1;
        }
        // ACL entries in use by the new image are complete before listeners point at them.
        let wanted_acls: BTreeMap<u32, BTreeSet<IpNet>> = image
            .acls
            .iter()
            .map(|(name, nets)| (acl_id(name), nets.iter().map(|n| n.trunc()).collect()))
            .collect();
        for (id, nets) in &wanted_acls {
            self.sync_acl(*id, nets, &mut report)?;
        }
        for (key, li) in &image.listeners {
            if self.images.get(key) == Some(li) && self.programmed.contains_key(key) {
                continue;
            }
            let table: Vec<SlabEntry> = li
                .table
                .iter()
                .chain(li.members.iter())
                .map(|e| SlabEntry {
                    backend: self.backend_slots[&e.backend],
                    weight: e.weight,
                })
                .collect();
            let old = self.programmed.get(key).cloned();
            let id = match old.as_ref() {
                Some(p) => p.meta.id,
                None => self.alloc_listener_id()?,
            };
            let (table_off, rewrite, fresh) = match &old {
                Some(p) if p.table == table => (p.meta.table_off, false, false),
                _ => {
                    let (off, fresh) = self.slab.share(&table)?;
                    (off, true, fresh)
                }
            };
            if fresh {
                for (i, e) in table.iter().enumerate() {
                    self.maps
                        .slab
                        .set(table_off + i as u32, e, 0)
                        .map_err(map_err(MAP_SLAB))?;
                }
                report.tables_written += 1;
            }
            let meta = ListenerMeta {
                id,
                flags: li.flags,
                scheduler: li.scheduler,
                table_off,
                table_len: li.table.len() as u32,
                acl_id: li.acl.as_deref().map(acl_id).unwrap_or(0),
                legacy_acl_id: li.legacy_acl.as_deref().map(acl_id).unwrap_or(0),
                persistence_timeout: li.persistence_timeout,
                idle_timeout: li.idle_timeout,
                members_len: li.members.len() as u32,
            };
            if old.as_ref().map(|p| p.meta) != Some(meta) {
                if old.is_none() {
                    zero_slot(&mut self.maps.listener_stats, id, MAP_LISTENER_STATS)?;
                    report.listeners_added += 1;
                } else {
                    report.listeners_changed += 1;
                }
                // The slot first: a port entry naming this id is only written below.
                self.write_slot(id, ListenerSlot { key: *key, meta })?;
                self.maps
                    .listeners
                    .insert(key, meta, 0)
                    .map_err(map_err(MAP_LISTENERS))?;
            }
            let vip = vip_key(key);
            if self.vips.insert(vip) {
                self.maps
                    .vips
                    .insert(vip, 0, 0)
                    .map_err(map_err(MAP_VIPS))?;
            }
            if let Some(p) = &old {
                if rewrite {
                    self.slab
                        .release(p.meta.table_off, p.meta.table_len + p.meta.members_len);
                    if meta.persistence_timeout > 0 {
                        let usable = table
                            .iter()
                            .filter(|e| e.weight > 0)
                            .map(|e| e.backend)
                            .collect();
                        self.prune_persistence(id, &usable)?;
                    }
                }
            }
            self.listener_ids.insert(*key, id);
            self.programmed.insert(*key, Programmed { meta, table });
            self.images.insert(*key, li.clone());
        }
        let ports = self.wanted_ports(image.listeners.keys());
        self.sync_ports(ports)?;
        let gone: Vec<ListenerKey> = self
            .programmed
            .keys()
            .filter(|k| !image.listeners.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match self.maps.listeners.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DataplaneError::Map {
                        name: MAP_LISTENERS,
                        source,
                    })
                }
            }
            if let Some(p) = self.programmed.remove(&key) {
                self.write_slot(p.meta.id, ListenerSlot::default())?;
                self.slab
                    .release(p.meta.table_off, p.meta.table_len + p.meta.members_len);
                self.prune_persistence(p.meta.id, &BTreeSet::new())?;
            }
            self.listener_ids.remove(&key);
            self.images.remove(&key);
            report.listeners_removed += 1;
        }
        let vips: BTreeSet<VipKey> = image.listeners.keys().map(vip_key).collect();
        for vip in self.vips.difference(&vips).copied().collect::<Vec<_>>() {
            match self.maps.vips.remove(&vip) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DataplaneError::Map {
                        name: MAP_VIPS,
                        source,
                    })
                }
            }
            self.vips.remove(&vip);
        }
        let stale_acls: Vec<u32> = self
            .acls
            .keys()
            .filter(|id| !wanted_acls.contains_key(id))
            .copied()
            .collect();
        for id in stale_acls {
            self.sync_acl(id, &BTreeSet::new(), &mut report)?;
        }
        let used = image.backends();
        let released: Vec<(BackendAddr, u32)> = self
            .backend_slots
            .iter()
            .filter(|(b, _)| !used.contains(b))
            .map(|(b, s)| (*b, *s))
            .collect();
        for (b, slot) in released {
            // Keep the address: flows established to it go on until they end (B4.8).
            let mut rec = self
                .maps
                .backends
                .get(&slot, 0)
                .map_err(map_err(MAP_BACKENDS))?;
            rec.in_use = 0;
            self.maps
                .backends
                .set(slot, rec, 0)
                .map_err(map_err(MAP_BACKENDS))?;
            self.backend_slots.remove(&b);
            report.backends_released += 1;
        }
        Ok(report)
    }
}
