//! Developer tooling for slb: the `cargo xtask` commands (see `main.rs`) and the
//! network-namespace lab that the demo and the end-to-end tests share.
//!
//! # Layout
//! * [`lab`]: namespaces, veth pairs and the toy TCP/UDP services the backends run.
//! * [`cmd`]: running external commands with errors that say what failed and why.
pub mod cmd;
pub mod lab;
