//! The running data plane of `slb serve`: the loaded program, its pinned maps, and the sync
//! that keeps them equal to the configuration.
use std::{collections::BTreeSet, path::PathBuf};

use aya::{programs::XdpMode, Ebpf};

use crate::{
    config::{self, Config},
    dataplane::{
        image::{BackendAddr, Image, ImageCache},
        loader::{self, LoadOptions, Loaded},
        reaper::{monotonic_ns, RstSender},
        sync::{Sync, SyncReport},
        DataplaneError,
    },
};

pub struct Agent {
    _ebpf: Ebpf,
    rst: RstSender,
    pub sync: Sync,
    pub pin_dir: PathBuf,
    /// Backends failing their health checks: flagged down and left out of rings and sequences.
    down: BTreeSet<BackendAddr>,
    images: ImageCache,
}

pub fn xdp_mode(m: config::XdpMode) -> XdpMode {
    match m {
        config::XdpMode::Native => XdpMode::Driver,
        config::XdpMode::Generic => XdpMode::Skb,
    }
}

/// A translated reply whose next hop is not resolved yet goes to the kernel stack (see
/// `slb-ebpf/src/nat.rs`); its source is the VIP, a local address, which the kernel drops as
/// martian unless `accept_local` is on for the interface it arrived on.
fn accept_local(iface: &str) -> Result<(), DataplaneError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"));
    std::fs::write(&path, "1").map_err(|source| DataplaneError::Io { path, source })
}

impl Agent {
    /// Loads (or adopts, after a restart) the pinned data plane, programs `cfg` and attaches
    /// to every configured interface.
    pub fn start(cfg: &Config) -> Result<(Agent, SyncReport), DataplaneError> {
        let pin_dir = cfg.agent.pin_path.clone();
        let Loaded { mut ebpf, maps } = loader::load(&LoadOptions {
            pin_dir: Some(pin_dir.clone()),
            flow_entries: cfg.agent.flow_table_size,
            persist_entries: cfg.agent.persist_table_size,
        })?;
        let mut sync = Sync::adopt(maps)?;
        let down = BTreeSet::new();
        let mut images = ImageCache::default();
        let report = sync.apply(&Image::build_cached(cfg, &down, &mut images))?;
        for iface in &cfg.agent.interfaces {
            accept_local(iface)?;
            loader::attach(
                &mut ebpf,
                iface,
                xdp_mode(cfg.agent.xdp_mode),
                Some(&pin_dir),
            )?;
        }
        Ok((
            Agent {
                _ebpf: ebpf,
                rst: RstSender::new().map_err(|source| DataplaneError::RawSocket { source })?,
                sync,
                pin_dir,
                down,
                images,
            },
            report,
        ))
    }

    /// Applies a new configuration: only the difference reaches the maps.
    pub fn reload(&mut self, cfg: &Config) -> Result<SyncReport, DataplaneError> {
        self.program(cfg, self.down.clone())
    }

    /// Programs `cfg` with the `down` backends out of new-flow selection (B4.15).
    pub fn program(
        &mut self,
        cfg: &Config,
        down: BTreeSet<BackendAddr>,
    ) -> Result<SyncReport, DataplaneError> {
        // The kernel skips a flagged backend at once; the tables without it follow.
        for b in down.difference(&self.down) {
            self.sync.set_down(b, true)?;
        }
        let report = self
            .sync
            .apply(&Image::build_cached(cfg, &down, &mut self.images))?;
        for b in self.down.difference(&down) {
            self.sync.set_down(b, false)?;
        }
        // A backend new to the maps starts unflagged.
        for b in &down {
            self.sync.set_down(b, true)?;
        }
        self.down = down;
        Ok(report)
    }

    /// Closes established TCP flows idle past their `EstablishedTimeout` with a RST to both
    /// ends (B12.3); returns how many.
    pub fn reap(&mut self) -> Result<usize, DataplaneError> {
        let idle = self.sync.idle_tcp_flows(monotonic_ns())?;
        for f in &idle {
            for (src, dst, seq) in [
                (f.vip, f.client, f.entry.client_ack),
                (f.client, f.backend, f.entry.client_next_seq),
            ] {
                if let Err(e) = self.rst.send(src, dst, seq) {
                    log::warn!("RST {src} -> {dst}: {e}");
                }
            }
            self.sync.forget_flow(f)?;
            log::info!(
                "closed idle flow {} -> {} via {}",
                f.client,
                f.vip,
                f.backend
            );
        }
        Ok(idle.len())
    }
}
