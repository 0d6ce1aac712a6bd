//! The simulator's parts, for the `iommu-sim` binary and the daemon's recordings: built-in
//! workloads ([`workload`]), the platform they run on, a unit programmed by its driver
//! ([`platform`]), and the trace-file format of `replay` and the daemon's `record`
//! ([`trace_file`]).

pub mod nested;
pub mod platform;
pub mod plot;
pub mod run;
pub mod trace_file;
pub mod workload;
