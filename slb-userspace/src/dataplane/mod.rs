//! Everything between the configuration and the kernel: the scheduling tables (Maglev rings,
//! sequences), the logical map image of a configuration, the loader, and the sync that writes
//! only what changed.
pub mod image;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod reaper;
pub mod sequence;
pub mod sync;

use std::path::PathBuf;

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError},
    EbpfError,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object: {source}")]
    Load { source: EbpfError },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("the XDP object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("attaching to {iface}: {source}")]
    Attach { iface: String, source: ProgramError },
    #[error("pinned link {}: {source}", path.display())]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning {}: {source}", path.display())]
    Pin { path: PathBuf, source: PinError },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening raw sockets for RSTs: {source}")]
    RawSocket { source: std::io::Error },
    #[error("{what} exhausted: {needed} needed, {capacity} available")]
    Full {
        what: &'static str,
        needed: u64,
        capacity: u64,
    },
}
