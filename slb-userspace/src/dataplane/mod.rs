//! Programming the XDP data plane.
//!
//! # Layout
//! - `maglev`: weighted Maglev tables for the consistent-hash schedulers (`sch`, `tch`, `qch`)
//! - `sequence`: smooth weighted round-robin sequences for `wrr` and `rr`

pub mod maglev;
pub mod sequence;
