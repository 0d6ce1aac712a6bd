//! Page-table formats of Intel VT-d and AMD-Vi, one- and two-dimensional walkers, and a table
//! builder.

pub mod mem;

pub use mem::{GuestMem, MemError, PhysMem, SparseMem};
