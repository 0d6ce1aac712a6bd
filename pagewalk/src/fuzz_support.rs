//! The robustness check shared by the cargo-fuzz target (`fuzz/fuzz_targets/walk_any.rs`), the
//! corpus replay test (`tests/pagewalk_fuzz_replay.rs`) and a proptest: walk arbitrary memory
//! contents in every format, one- and two-dimensionally, from the root and from arbitrary
//! starting states, and let the table builder parse them. Nothing may panic, every walk must
//! stay within its bound of memory references, successful walks must be self-consistent, a
//! nested walk must equal the composition of its two one-dimensional walks, and what the
//! builder reads back must agree with what the walker translated.

use crate::builder::{BumpAllocator, Mapping, TableBuilder};
use crate::format::{AmdV1Config, VtdSsConfig, WalkConfig, X86Config};
use crate::mem::FlatMem;
use crate::nested::{SecondStage, SecondStageView, walk_nested, walk_nested_from};
use crate::observer::{RecordingTrace, RefKind};
use crate::types::{Access, AccessKind, Fault, Perms, Translation, WalkStart};
use crate::walk::{MAX_AD_RETRIES, walk, walk_from};

/// Bytes of header before the memory image.
pub const HEADER: usize = 16;
/// Largest memory image used (8 pages at physical address 0).
pub const MAX_IMAGE: usize = 8 * 4096;

/// Decodes `data` (header + memory image) and runs every check; panics only if an invariant
/// is broken.
pub fn check_walks(data: &[u8]) {
    if data.len() < HEADER {
        return;
    }
    let h = &data[..HEADER];
    let flags = u16::from_le_bytes([h[0], h[1]]);
    let levels_sel = h[2];
    let access = Access {
        kind: match h[3] % 3 {
            0 => AccessKind::Read,
            1 => AccessKind::Write,
            _ => AccessKind::Execute,
        },
        privileged: h[3] & 4 != 0,
    };
    let mut iova = [0u8; 8];
    iova.copy_from_slice(&h[4..12]);
    let raw = u64::from_le_bytes(iova);
    let root = u64::from(h[12] % 8) * 0x1000;
    let start_level = h[13] % 8;
    let start_table = (u64::from(h[14] % 9) * 0x1000) | u64::from(h[15]);
    let start_perms = Perms::from_bits_truncate(h[15] >> 4);
    let image = &data[HEADER..data.len().min(HEADER + MAX_IMAGE)];
    let mem = FlatMem::from_bytes(0, image);

    let flag = |b: u32| flags & (1 << b) != 0;
    // Mostly addresses and modes every format can translate (below 2^38, AMD-Vi modes 3..=6);
    // anything goes when both "wild" bits are set.
    let wild = flag(15) && h[12] & 0x80 != 0;
    let iova = if wild { raw } else { raw & 0x3f_ffff_ffff };
    let x86 = |levels| X86Config {
        levels,
        out_width: 36 + (levels_sel >> 4) % 17,
        sre: flag(0),
        wpe: flag(1),
        nxe: flag(2),
        ere: flag(3),
        smep: flag(4),
        eafe: flag(5),
        ad: flag(6),
        ps_1g: flag(7),
    };
    let ss = VtdSsConfig {
        slade: flag(8),
        slee: flag(9),
        sp_2m: flag(10),
        sp_1g: flag(11),
        haw: 36 + (levels_sel >> 4) % 17,
        ..VtdSsConfig::new(3 + levels_sel % 3)
    };
    let v1 = AmdV1Config {
        // Modes 0 and 7 (no table) only with the anything-goes flag.
        mode: if wild {
            levels_sel % 8
        } else {
            3 + levels_sel % 4
        },
        ir: flag(12),
        iw: flag(13),
        had: flag(14),
        out_width: 40 + (levels_sel >> 3) % 13,
    };
    let fs_levels = 4 + (levels_sel >> 2) % 2;
    let configs = [
        WalkConfig::VtdFirstStage(x86(fs_levels)),
        WalkConfig::VtdSecondStage(ss),
        WalkConfig::AmdV1(v1),
        WalkConfig::AmdV2(x86(fs_levels)),
    ];

    for cfg in &configs {
        let mut tr = RecordingTrace::<128>::new();
        let r = walk(cfg, &mem, root, iova, access, &mut tr);
        check_1d(cfg, iova, access, &r, &tr, cfg.levels());
        if let Ok(t) = r {
            // Walking again over the (possibly A/D-updated) tables gives the same page.
            let again = walk(cfg, &mem, root, iova, access, &mut ()).expect("repeatable walk");
            assert_eq!((again.output, again.page_shift), (t.output, t.page_shift));
        }
        let start = WalkStart {
            level: start_level,
            table: start_table,
            perms: start_perms,
        };
        let mut tr = RecordingTrace::<128>::new();
        let r = walk_from(cfg, &mem, start, iova, access, &mut tr);
        check_1d(cfg, iova, access, &r, &tr, start_level.min(cfg.levels()));
        if let Ok(t) = r {
            assert!(t.perms.intersection(start_perms) == t.perms);
        }

        // The builder parses whatever is there without panicking, and can tear it down; where
        // it lists a mapping of the page the walker translated, they agree on it.
        if let Ok(b) = TableBuilder::with_root(*cfg, root) {
            if let (Ok(t), Ok(maps)) = (
                walk(cfg, &mem, root, iova, access, &mut ()),
                b.mappings(&mem),
            ) {
                check_builder_agrees(cfg, iova, &t, &maps);
            }
            let mut alloc = BumpAllocator::new(0x10_0000, 0x20_0000);
            let mut b2 = b.clone();
            let _ = b2.unmap(&mem, &mut alloc, iova & !0xfff, 0x20_0000);
        }
    }

    // Nested: each first-stage format over each second-stage format, and over the identity.
    let seconds = [
        SecondStage::Tables {
            config: configs[1],
            root: u64::from(h[13] % 8) * 0x1000,
        },
        SecondStage::Tables {
            config: configs[2],
            root: u64::from(h[14] % 8) * 0x1000,
        },
        SecondStage::Identity,
    ];
    for first in [&configs[0], &configs[3]] {
        for second in &seconds {
            let mut tr = RecordingTrace::<1024>::new();
            let r = walk_nested(first, root, second, &mem, iova, access, &mut tr);
            check_nested(first, second, iova, &r.map(|t| t.output), &tr);
            if let Ok(t) = r {
                assert!(t.page_shift <= t.first.page_shift);
                assert_eq!(
                    t.output & ((1 << t.page_shift) - 1),
                    iova & ((1 << t.page_shift) - 1)
                );
                assert!(t.first.perms.contains(t.perms));
                check_composition(first, second, &mem, root, iova, access, &t);
            }
            let start = WalkStart {
                level: start_level,
                table: start_table,
                perms: start_perms,
            };
            let mut tr = RecordingTrace::<1024>::new();
            let r = walk_nested_from(first, start, second, &mem, iova, access, &mut tr);
            check_nested(first, second, iova, &r.map(|t| t.output), &tr);
        }
    }
}

/// A successful nested walk is the composition of two one-dimensional walks: the first stage
/// walked over guest memory as the second stage maps it (a `SecondStageView`: table reads need
/// read permission, A/D updates write permission, as in the nested walk) reaches the same
/// guest-physical page, and the second stage (or the identity) takes that address to the same
/// output, at the smaller of the two page sizes.
fn check_composition(
    first: &WalkConfig,
    second: &SecondStage,
    mem: &FlatMem,
    root: u64,
    iova: u64,
    access: Access,
    t: &crate::nested::NestedTranslation,
) {
    match *second {
        SecondStage::Identity => {
            let one = walk(first, mem, root, iova, access, &mut ()).expect("first stage alone");
            assert_eq!((one.output, one.page_shift), (t.output, t.page_shift));
        }
        SecondStage::Tables {
            config,
            root: ss_root,
        } => {
            let view = SecondStageView {
                mem,
                config,
                root: ss_root,
            };
            let fs = walk(first, &view, root, iova, access, &mut ())
                .expect("the first stage through the second-stage view");
            assert_eq!(
                (fs.output, fs.page_shift),
                (t.first.output, t.first.page_shift)
            );
            let ss = walk(&config, mem, ss_root, fs.output, access, &mut ())
                .expect("the second stage of the first stage's output");
            assert_eq!(ss.output, t.output);
            assert_eq!(fs.page_shift.min(ss.page_shift), t.page_shift);
        }
    }
}

/// Where the builder lists a mapping that covers `iova`, it is the page the walker found:
/// same size, same output, and no more rights than the walk granted.
fn check_builder_agrees(cfg: &WalkConfig, iova: u64, t: &Translation, maps: &[Mapping]) {
    let input = if cfg.input_width() >= 64 {
        iova
    } else {
        iova & ((1u64 << cfg.input_width()) - 1)
    };
    let covering = maps.iter().find(|m| {
        let size = 1u128 << m.shift;
        u128::from(m.iova) <= u128::from(input) && u128::from(input) < u128::from(m.iova) + size
    });
    if let Some(m) = covering {
        assert_eq!(m.shift, t.page_shift, "{m:?} vs {t:?}");
        assert_eq!(m.phys | (input - m.iova), t.output, "{m:?} vs {t:?}");
    }
}

fn check_1d(
    cfg: &WalkConfig,
    iova: u64,
    access: Access,
    r: &Result<Translation, Fault>,
    tr: &RecordingTrace<128>,
    levels: u8,
) {
    assert_eq!(tr.dropped(), 0);
    let reads = tr.reads();
    let updates = tr
        .refs()
        .iter()
        .filter(|r| r.kind == RefKind::AdUpdate)
        .count();
    assert!(
        reads <= usize::from(levels),
        "{reads} reads for {levels} levels"
    );
    assert!(updates <= reads * (MAX_AD_RETRIES as usize + 1));
    match r {
        Ok(t) => {
            assert!((12..=52).contains(&t.page_shift), "{t:?}");
            let mask = (1u64 << t.page_shift) - 1;
            assert_eq!(t.output & mask, iova & mask);
            assert!(t.level >= 1 && t.level <= levels);
            assert!(cfg.permits(t.perms, access), "{t:?} {access:?}");
            assert_eq!(mem_level_of_last_read(tr), Some(t.level));
        }
        Err(f) => {
            assert!(f.level <= 7, "{f:?}");
            assert!(f.nested.is_none());
        }
    }
}

fn mem_level_of_last_read(tr: &RecordingTrace<128>) -> Option<u8> {
    tr.refs()
        .iter()
        .rev()
        .find(|r| r.kind == RefKind::Read)
        .map(|r| r.level)
}

fn check_nested(
    first: &WalkConfig,
    second: &SecondStage,
    iova: u64,
    r: &Result<u64, Fault>,
    tr: &RecordingTrace<1024>,
) {
    assert_eq!(tr.dropped(), 0);
    let n = usize::from(first.levels());
    let m = match second {
        SecondStage::Tables { config, .. } => usize::from(config.levels()),
        SecondStage::Identity => 0,
    };
    // n first-stage reads, each preceded by an m-read second-stage walk, plus the final one.
    assert!(tr.reads() <= n * m + n + m, "{} reads", tr.reads());
    if let Ok(out) = r {
        assert_eq!(out & 0xfff, iova & 0xfff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made input: valid 4-level VT-d second-stage tables at pages 0..4 mapping IOVA 0.
    #[test]
    fn valid_tables_walk_in_the_checker() {
        let mut data = vec![0u8; HEADER + 5 * 4096];
        data[2] = 1; // second stage: 4 levels
        let words = [
            (0u64, 0x1003u64),
            (0x1000, 0x2003),
            (0x2000, 0x3003),
            (0x3000, 0x4003),
        ];
        for (a, v) in words {
            let at = HEADER + a as usize;
            data[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        check_walks(&data);
        let mem = FlatMem::from_bytes(0, &data[HEADER..]);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let t = walk(&cfg, &mem, 0, 0x123, Access::READ, &mut ()).unwrap();
        assert_eq!(t.output, 0x4123);
        // Too-short inputs are ignored.
        check_walks(&[1, 2, 3]);
    }
}
