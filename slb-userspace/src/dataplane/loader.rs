//! Loading the XDP object, pinning its maps, attaching it to interfaces. A restarted agent
//! adopts the pinned maps (flows survive) and atomically swaps the program behind the pinned
//! links, so forwarding never stops.
use std::path::{Path, PathBuf};

use aya::{
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use slb_common::*;

use super::{maps::Maps, DataplaneError};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin maps and links here; `None` loads private, unpinned maps (tests, replay).
    pub pin_dir: Option<PathBuf>,
    pub flow_entries: u32,
    pub persist_entries: u32,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

/// Loads the program (not attached). With a pin directory, existing pinned maps are reused.
pub fn load(opts: &LoadOptions) -> Result<Loaded, DataplaneError> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MAP_FLOWS, opts.flow_entries)
        .map_max_entries(MAP_REV_FLOWS, opts.flow_entries)
        .map_max_entries(MAP_PERSIST, opts.persist_entries);
    let pins: Vec<(&str, PathBuf)> = match &opts.pin_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
                path: dir.clone(),
                source,
            })?;
            ALL_MAPS.iter().map(|m| (*m, dir.join(m))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(crate::EBPF_OBJECT)
        .map_err(|source| DataplaneError::Load { source })?;
    for name in [PROGRAM_NAME, "slb_pass"] {
        program(&mut ebpf, name)?
            .load()
            .map_err(|source| DataplaneError::Program { name, source })?;
    }
    let maps = Maps::take(&mut ebpf)?;
    Ok(Loaded { ebpf, maps })
}

pub fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// Attaches `slb_xdp` to `iface`. With a pin directory the link is pinned, and a link pinned
/// by a previous agent is updated in place instead (no window without the program).
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpMode,
    pin_dir: Option<&Path>,
) -> Result<(), DataplaneError> {
    let prog = program(ebpf, PROGRAM_NAME)?;
    let attach_err = |source| DataplaneError::Attach {
        iface: iface.to_string(),
        source,
    };
    let Some(dir) = pin_dir else {
        prog.attach(iface, mode).map_err(attach_err)?;
        return Ok(());
    };
    let pin = link_pin(dir, iface);
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(|source| DataplaneError::Link {
            path: pin.clone(),
            source,
        })?;
        let link = FdLink::from(pinned)
            .try_into()
            .map_err(|source| DataplaneError::Link {
                path: pin.clone(),
                source,
            })?;
        let id = prog.attach_to_link(link).map_err(attach_err)?;
        // The link stays pinned; the program no longer owns it once it is re-pinned.
        keep_pinned(prog, id, &pin, true)
    } else {
        let id = prog.attach(iface, mode).map_err(attach_err)?;
        keep_pinned(prog, id, &pin, false)
    }
}

fn keep_pinned(
    prog: &mut Xdp,
    id: aya::programs::xdp::XdpLinkId,
    pin: &Path,
    already_pinned: bool,
) -> Result<(), DataplaneError> {
    let link = prog
        .take_link(id)
        .map_err(|source| DataplaneError::Program {
            name: PROGRAM_NAME,
            source,
        })?;
    let fd: FdLink = link.try_into().map_err(|source| DataplaneError::Link {
        path: pin.to_path_buf(),
        source,
    })?;
    if already_pinned {
        // Dropping an FdLink closes our fd only; the pin keeps the link alive.
        drop(fd);
        return Ok(());
    }
    fd.pin(pin).map_err(|source| DataplaneError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Removes everything `load` and `attach` pinned under `dir`: links (detaching the program)
/// and maps.
pub fn unload(dir: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
