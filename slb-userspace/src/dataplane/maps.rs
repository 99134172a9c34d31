//! Typed handles on the program's maps, owned by the agent once the program is loaded.
use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use slb_common::*;

use super::DataplaneError;

pub struct Maps {
    pub listeners: HashMap<MapData, ListenerKey, ListenerMeta>,
    pub listener_slots: Array<MapData, ListenerSlot>,
    pub port_listeners: Array<MapData, u32>,
    pub vips: HashMap<MapData, VipKey, u32>,
    pub backends: Array<MapData, Backend>,
    pub backend_down: Array<MapData, u32>,
    pub backend_conns: Array<MapData, u64>,
    pub slab: Array<MapData, SlabEntry>,
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub rev_flows: HashMap<MapData, FlowKey, RevFlowEntry>,
    pub persist: HashMap<MapData, PersistKey, PersistEntry>,
    pub acl_v4: LpmTrie<MapData, AclV4, u32>,
    pub acl_v6: LpmTrie<MapData, AclV6, u32>,
    pub listener_stats: PerCpuArray<MapData, ListenerStats>,
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    pub global_stats: PerCpuArray<MapData, u64>,
}

fn take<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            listeners: take(ebpf, MAP_LISTENERS)?,
            listener_slots: take(ebpf, MAP_LISTENER_SLOTS)?,
            port_listeners: take(ebpf, MAP_PORT_LISTENERS)?,
            vips: take(ebpf, MAP_VIPS)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            backend_down: take(ebpf, MAP_BACKEND_DOWN)?,
            backend_conns: take(ebpf, MAP_BACKEND_CONNS)?,
            slab: take(ebpf, MAP_SLAB)?,
            flows: take(ebpf, MAP_FLOWS)?,
            rev_flows: take(ebpf, MAP_REV_FLOWS)?,
            persist: take(ebpf, MAP_PERSIST)?,
            acl_v4: take(ebpf, MAP_ACL_V4)?,
            acl_v6: take(ebpf, MAP_ACL_V6)?,
            listener_stats: take(ebpf, MAP_LISTENER_STATS)?,
            backend_stats: take(ebpf, MAP_BACKEND_STATS)?,
            global_stats: take(ebpf, MAP_GLOBAL_STATS)?,
        })
    }

    /// Opens the maps pinned by a running agent, for read-only tools (`slb stats`).
    pub fn from_pins(dir: &std::path::Path) -> Result<Self, DataplaneError> {
        fn open<T: TryFrom<Map, Error = MapError>>(
            dir: &std::path::Path,
            name: &'static str,
        ) -> Result<T, DataplaneError> {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| DataplaneError::Map { name, source })?;
            let map =
                Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })?;
            T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
        }
        Ok(Self {
            listeners: open(dir, MAP_LISTENERS)?,
            listener_slots: open(dir, MAP_LISTENER_SLOTS)?,
            port_listeners: open(dir, MAP_PORT_LISTENERS)?,
            vips: open(dir, MAP_VIPS)?,
            backends: open(dir, MAP_BACKENDS)?,
            backend_down: open(dir, MAP_BACKEND_DOWN)?,
            backend_conns: open(dir, MAP_BACKEND_CONNS)?,
            slab: open(dir, MAP_SLAB)?,
            flows: open(dir, MAP_FLOWS)?,
            rev_flows: open(dir, MAP_REV_FLOWS)?,
            persist: open(dir, MAP_PERSIST)?,
            acl_v4: open(dir, MAP_ACL_V4)?,
            acl_v6: open(dir, MAP_ACL_V6)?,
            listener_stats: open(dir, MAP_LISTENER_STATS)?,
            backend_stats: open(dir, MAP_BACKEND_STATS)?,
            global_stats: open(dir, MAP_GLOBAL_STATS)?,
        })
    }
}
