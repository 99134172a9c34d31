//! The slb agent: configuration, data-plane programming and the operator CLI.
//!
//! # Layout
//! - `config`: the API-shaped TOML model and its validation
//! - `dataplane`: Maglev rings and sequences, the map image, loader, sync
//! - `agent`: the running data plane of `slb serve`
//! - `api`: the SLB management API and its durable state
//! - `simulate`: userspace mirror of the kernel's new-flow choice
//! - `stats`: counters of a running agent
//! - `replay`: packets through the real program with `BPF_PROG_TEST_RUN`, pcap in/out

pub mod agent;
pub mod api;
pub mod bench;
pub mod bench_api;
pub mod bench_health;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod proxy;
pub mod replay;
pub mod simulate;
pub mod stats;
#[cfg(test)]
mod test_certs;

/// The XDP object built from `slb-ebpf` by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SLB_EBPF_OBJECT"));
/// The proxy's worker picker (`proxy::steer`), built beside it.
pub static WORKERS_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SLB_WORKERS_OBJECT"));
