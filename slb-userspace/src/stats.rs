//! `slb stats`: the per-CPU counters of a running agent, summed, read from its pinned maps.
use std::{fmt::Write as _, net::SocketAddr};

use slb_common::*;

use crate::dataplane::{image::words_addr, maps::Maps, DataplaneError};

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

#[derive(Debug, serde::Serialize)]
pub struct ListenerCounters {
    pub listener: String,
    pub counters: Vec<(&'static str, u64)>,
}

#[derive(Debug, serde::Serialize)]
pub struct BackendCounters {
    pub backend: String,
    pub active_flows: u64,
    pub counters: Vec<(&'static str, u64)>,
}

#[derive(Debug, serde::Serialize)]
pub struct Stats {
    pub global: Vec<(&'static str, u64)>,
    pub listeners: Vec<ListenerCounters>,
    pub backends: Vec<BackendCounters>,
}

pub fn listener_label(k: &ListenerKey) -> String {
    let proto = if k.proto == PROTO_TCP { "tcp" } else { "udp" };
    format!(
        "{}/{}",
        SocketAddr::new(words_addr(&k.addr, k.family), u16::from_be(k.port)),
        proto
    )
}

pub fn collect(maps: &Maps) -> Result<Stats, DataplaneError> {
    let mut global = Vec::new();
    for (i, name) in GS_NAMES.iter().enumerate() {
        let v = maps
            .global_stats
            .get(&(i as u32), 0)
            .map_err(map_err(MAP_GLOBAL_STATS))?;
        global.push((*name, v.iter().sum()));
    }
    let mut listeners = Vec::new();
    for kv in maps.listeners.iter() {
        let (k, meta) = kv.map_err(map_err(MAP_LISTENERS))?;
        let v = maps
            .listener_stats
            .get(&meta.id, 0)
            .map_err(map_err(MAP_LISTENER_STATS))?;
        let counters = LS_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, v.iter().map(|s| s.c[i]).sum()))
            .collect();
        listeners.push(ListenerCounters {
            listener: listener_label(&k),
            counters,
        });
    }
    listeners.sort_by(|a, b| a.listener.cmp(&b.listener));
    let mut backends = Vec::new();
    for (slot, b) in maps.backends.iter().enumerate() {
        let b = b.map_err(map_err(MAP_BACKENDS))?;
        if b.in_use == 0 {
            continue;
        }
        let slot = slot as u32;
        let v = maps
            .backend_stats
            .get(&slot, 0)
            .map_err(map_err(MAP_BACKEND_STATS))?;
        let active_flows = maps
            .backend_conns
            .get(&slot, 0)
            .map_err(map_err(MAP_BACKEND_CONNS))?;
        backends.push(BackendCounters {
            backend: SocketAddr::new(words_addr(&b.addr, b.family), u16::from_be(b.port))
                .to_string(),
            active_flows,
            counters: BS_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, v.iter().map(|s| s.c[i]).sum()))
                .collect(),
        });
    }
    Ok(Stats {
        global,
        listeners,
        backends,
    })
}

pub fn render(s: &Stats) -> String {
    let mut out = String::new();
    let line = |c: &[(&str, u64)]| {
        c.iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(out, "global: {}", line(&s.global));
    for l in &s.listeners {
        let _ = writeln!(out, "listener {}: {}", l.listener, line(&l.counters));
    }
    for b in &s.backends {
        let _ = writeln!(
            out,
            "backend {}: active_flows={} {}",
            b.backend,
            b.active_flows,
            line(&b.counters)
        );
    }
    out
}
