//! Replays the checked-in corpus of the `walk_any` fuzz target (`fuzz/corpus/walk_any/`) through
//! the same checks the fuzzer runs (`pagewalk::fuzz_support::check_walks`), so that the corpus
//! is exercised by `cargo test` without cargo-fuzz or a nightly toolchain. The hand-made seeds
//! are also checked to translate the way they were built to.

use std::path::PathBuf;

use pagewalk::fuzz_support::{HEADER, check_walks};
use pagewalk::{
    Access, AmdV1Config, FlatMem, SecondStage, VtdSsConfig, WalkConfig, X86Config, walk,
    walk_nested,
};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/walk_any")
}

fn seed(name: &str) -> (Vec<u8>, FlatMem, u64) {
    let data = std::fs::read(corpus_dir().join(name)).unwrap();
    let mem = FlatMem::from_bytes(0, &data[HEADER..]);
    let iova = u64::from_le_bytes(data[4..12].try_into().unwrap()) & 0x3f_ffff_ffff;
    (data, mem, iova)
}

#[test]
fn corpus_replays_without_breaking_an_invariant() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        check_walks(&data);
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} inputs");
}

#[test]
fn hand_made_seeds_translate_as_built() {
    let (_, mem, iova) = seed("vtd_ss_4level");
    let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
    let t = walk(&ss, &mem, 0, iova, Access::WRITE, &mut ()).unwrap();
    assert_eq!(t.output, 0x7000 | (iova & 0xfff));

    let (_, mem, iova) = seed("x86_4level");
    let fs = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4));
    assert_eq!(
        walk(&fs, &mem, 0, iova, Access::WRITE, &mut ())
            .unwrap()
            .output,
        0x7000 | (iova & 0xfff)
    );

    let (_, mem, iova) = seed("x86_2m_leaf");
    let t = walk(&fs, &mem, 0, iova, Access::READ, &mut ()).unwrap();
    assert_eq!(
        (t.page_shift, t.output),
        (21, 0x20_0000 | (iova & 0x1f_ffff))
    );

    let (_, mem, iova) = seed("x86_5level");
    let fs5 = WalkConfig::AmdV2(X86Config::amd_v2(5));
    assert_eq!(
        walk(&fs5, &mem, 0, iova, Access::READ, &mut ())
            .unwrap()
            .output,
        0x7000 | (iova & 0xfff)
    );

    let (_, mem, iova) = seed("amd_v1_skip_nl7");
    let v1 = WalkConfig::AmdV1(AmdV1Config::new(4));
    let t = walk(&v1, &mem, 0, iova, Access::WRITE, &mut ()).unwrap();
    assert_eq!((t.page_shift, t.output), (16, 0x50_0000 | (iova & 0xffff)));
    assert!(t.force_coherent);

    let (_, mem, iova) = seed("nested_identity_ss");
    let second = SecondStage::Tables {
        config: ss,
        root: 0x1000,
    };
    let t = walk_nested(&fs, 0, &second, &mem, iova, Access::READ, &mut ()).unwrap();
    assert_eq!(t.output, 0x3000 | (iova & 0xfff));

    // The self-referencing seeds terminate with a fault or a translation, never a hang.
    let (_, mem, iova) = seed("amd_loop_nl5");
    let v1_6 = WalkConfig::AmdV1(AmdV1Config::new(6));
    assert!(walk(&v1_6, &mem, 0, iova, Access::READ, &mut ()).is_err());
}
