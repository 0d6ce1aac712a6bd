//! Loom models of the A/D compare-and-exchange path: concurrent walkers setting accessed/dirty
//! flags on the same entries, and a driver revoking write permission while a walk is in flight.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p pagewalk --release --lib loom`.
//!
//! The memory is three loom atomics at the addresses a 3-level VT-d second-stage walk of
//! `IOVA = 0` reads (entry 0 of each table); every other address is unmapped.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;

use crate::format::vtd_ss::{SS_A, SS_D, SS_R, SS_W};
use crate::mem::{MemError, PhysMem};
use crate::types::{Access, FaultKind};
use crate::walk::walk;
use crate::{VtdSsConfig, WalkConfig};

const ROOT: u64 = 0x1000;
const L2: u64 = 0x2000;
const L1: u64 = 0x3000;
const PAGE: u64 = 0x9000;

struct LoomMem {
    words: [(u64, AtomicU64); 3],
}

impl LoomMem {
    fn new(leaf: u64) -> Self {
        Self {
            words: [
                (ROOT, AtomicU64::new(L2 | SS_R | SS_W)),
                (L2, AtomicU64::new(L1 | SS_R | SS_W)),
                (L1, AtomicU64::new(leaf)),
            ],
        }
    }
    fn word(&self, addr: u64) -> Result<&AtomicU64, MemError> {
        self.words
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, w)| w)
            .ok_or(MemError::Unmapped(addr))
    }
}

impl PhysMem for LoomMem {
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        Ok(self.word(addr)?.load(Ordering::Acquire))
    }
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError> {
        self.word(addr)?.store(val, Ordering::Release);
        Ok(())
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        Ok(self
            .word(addr)?
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire))
    }
    fn write_u32(&self, addr: u64, _val: u32) -> Result<(), MemError> {
        Err(MemError::Unmapped(addr))
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        Err(MemError::Unmapped(addr))
    }
}

fn cfg() -> WalkConfig {
    WalkConfig::VtdSecondStage(VtdSsConfig::new(3).with_slade(true))
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn loom_concurrent_walkers_lose_no_flags() {
    model(|| {
        let mem = Arc::new(LoomMem::new(PAGE | SS_R | SS_W));
        let m2 = mem.clone();
        let t = thread::spawn(move || walk(&cfg(), &*m2, ROOT, 0x10, Access::READ, &mut ()));
        let w = walk(&cfg(), &*mem, ROOT, 0x20, Access::WRITE, &mut ()).unwrap();
        let r = t.join().unwrap().unwrap();
        assert_eq!(w.output, PAGE | 0x20);
        assert_eq!(r.output, PAGE | 0x10);
        // Both walkers' flags are in memory: A everywhere, D on the leaf.
        for (a, word) in &mem.words {
            let v = word.load(Ordering::Acquire);
            assert_eq!(v & SS_A, SS_A, "{a:#x}");
            assert_eq!(v & SS_D != 0, *a == L1, "{a:#x}");
        }
    });
}

#[test]
fn loom_write_permission_revoked_during_walk() {
    model(|| {
        let mem = Arc::new(LoomMem::new(PAGE | SS_R | SS_W));
        let m2 = mem.clone();
        // The driver makes the page read-only with its own atomic update.
        let driver = thread::spawn(move || {
            let w = m2.word(L1).unwrap();
            let mut cur = w.load(Ordering::Acquire);
            loop {
                match w.compare_exchange(cur, cur & !SS_W, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(actual) => cur = actual,
                }
            }
        });
        let res = walk(&cfg(), &*mem, ROOT, 0, Access::WRITE, &mut ());
        driver.join().unwrap();
        let leaf = mem.word(L1).unwrap().load(Ordering::Acquire);
        assert_eq!(leaf & SS_W, 0);
        match res {
            // The write was translated while W was set: D was set by that same exchange.
            Ok(t) => {
                assert_eq!(leaf & SS_D, SS_D);
                assert_eq!(t.entry & (SS_W | SS_D), SS_W | SS_D);
            }
            // Refused: D must never have been set on a read-only entry.
            Err(f) => {
                assert_eq!(f.kind, FaultKind::Permission);
                assert_eq!(leaf & SS_D, 0);
            }
        }
    });
}
