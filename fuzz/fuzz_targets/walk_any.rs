//! Walks arbitrary memory contents in every page-table format (VT-d first- and second-stage,
//! AMD-Vi v1 and v2), one- and two-dimensionally, from the root and from arbitrary
//! paging-structure-cache states, and lets the table builder parse them. The input is a
//! 16-byte header (format controls, levels, access, IOVA, roots) followed by a memory image of
//! up to eight pages at physical address 0; see `pagewalk::fuzz_support::check_walks`.
//!
//! Run: `cargo +nightly fuzz run walk_any` (from the repository root). The corpus in
//! `fuzz/corpus/walk_any/` replays as an ordinary test: `tests/pagewalk_fuzz_replay.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pagewalk::fuzz_support::check_walks(data);
});
