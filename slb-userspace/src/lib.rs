//! The slb agent: configuration, data-plane programming and the operator CLI.

pub mod dataplane;

/// The XDP object built from `slb-ebpf` by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SLB_EBPF_OBJECT"));
