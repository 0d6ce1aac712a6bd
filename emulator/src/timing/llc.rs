//! A small set-associative last-level-cache model for the unit's structure accesses: a line
//! the unit touched recently costs `hit_cycles` instead of `dram_cycles`. It holds tags only,
//! its state lives in the [`CostModel`](super::CostModel), and it is deterministic: the one
//! random choice (the `random` replacement policy) comes from a splitmix64 sequence seeded by
//! the caller.

use super::params::{LlcParams, Replacement};

/// The tag of an empty way.
const EMPTY: u64 = u64::MAX;

/// The LLC's tags and replacement state.
#[derive(Debug, Clone)]
pub(crate) struct Llc {
    line_shift: u32,
    sets: u64,
    /// `sets - 1` when `sets` is a power of two (the set index is then a mask).
    set_mask: Option<u64>,
    ways: usize,
    policy: Replacement,
    /// `sets * ways` line numbers (`EMPTY` when free).
    tags: Vec<u64>,
    /// Per way: the last use (LRU) or the fill order (FIFO).
    stamps: Vec<u64>,
    /// Per set: the referenced bits (PLRU).
    ref_bits: Vec<u64>,
    clock: u64,
    rng: u64,
}

impl Llc {
    /// An empty LLC of the (validated) geometry `p`, its random choices seeded with `seed`.
    pub(crate) fn new(p: &LlcParams, seed: u64) -> Self {
        let sets = p.sets().max(1);
        let ways = p.ways.max(1) as usize;
        let lines = sets as usize * ways;
        Self {
            line_shift: p.line_bytes.max(1).trailing_zeros(),
            sets,
            set_mask: sets.is_power_of_two().then(|| sets - 1),
            ways,
            policy: p.replacement,
            tags: vec![EMPTY; lines],
            stamps: vec![0; lines],
            ref_bits: vec![0; sets as usize],
            clock: 0,
            rng: seed,
        }
    }

    /// Accesses the line holding `addr`: whether it was present. A miss fills it.
    pub(crate) fn access(&mut self, addr: u64) -> bool {
        let line = addr >> self.line_shift;
        let set = match self.set_mask {
            Some(m) => line & m,
            None => line % self.sets,
        } as usize;
        let base = set * self.ways;
        self.clock += 1;
        if let Some(w) = self.tags[base..base + self.ways]
            .iter()
            .position(|&t| t == line)
        {
            self.touch(set, base, w);
            return true;
        }
        let w = self.victim(set, base);
        self.tags[base + w] = line;
        self.stamps[base + w] = self.clock;
        self.touch(set, base, w);
        false
    }

    /// Records a use of way `w` of `set`.
    fn touch(&mut self, set: usize, base: usize, w: usize) {
        match self.policy {
            Replacement::Lru => self.stamps[base + w] = self.clock,
            Replacement::Plru => {
                let all = if self.ways == 64 {
                    u64::MAX
                } else {
                    (1u64 << self.ways) - 1
                };
                let bits = self.ref_bits[set] | (1 << w);
                // Setting the last clear bit clears the others, as the units' caches do.
                self.ref_bits[set] = if bits == all { 1 << w } else { bits };
            }
            Replacement::Fifo | Replacement::Random => {}
        }
    }

    /// The way a fill of `set` replaces: an empty one, else the policy's choice.
    fn victim(&mut self, set: usize, base: usize) -> usize {
        let ways = &self.tags[base..base + self.ways];
        if let Some(w) = ways.iter().position(|&t| t == EMPTY) {
            return w;
        }
        let oldest = || {
            let s = &self.stamps[base..base + self.ways];
            (0..s.len()).min_by_key(|&i| s[i]).unwrap_or(0)
        };
        match self.policy {
            // LRU: the oldest use; FIFO: the oldest fill (hits do not restamp).
            Replacement::Lru | Replacement::Fifo => oldest(),
            Replacement::Plru => (!self.ref_bits[set]).trailing_zeros() as usize % self.ways,
            Replacement::Random => (splitmix64(&mut self.rng) % self.ways as u64) as usize,
        }
    }
}

/// The next value of a splitmix64 sequence.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    fn params(sets: u64, ways: u32, policy: Replacement) -> LlcParams {
        LlcParams {
            size_bytes: sets * u64::from(ways) * 64,
            ways,
            line_bytes: 64,
            hit_cycles: 10,
            replacement: policy,
        }
    }

    /// A sequential reference: each set a queue of lines, most recently used (LRU) or most
    /// recently filled (FIFO) at the back.
    struct Reference {
        sets: Vec<VecDeque<u64>>,
        ways: usize,
        lru: bool,
    }

    impl Reference {
        fn access(&mut self, addr: u64) -> bool {
            let line = addr >> 6;
            let n = self.sets.len() as u64;
            let set = &mut self.sets[(line % n) as usize];
            if let Some(i) = set.iter().position(|&l| l == line) {
                if self.lru {
                    set.remove(i);
                    set.push_back(line);
                }
                return true;
            }
            if set.len() == self.ways {
                set.pop_front();
            }
            set.push_back(line);
            false
        }
    }

    proptest! {
        /// LRU and FIFO agree with the queue reference on every access, for power-of-two and
        /// other set counts.
        #[test]
        fn lru_and_fifo_match_the_reference(
            sets in prop::sample::select(vec![1u64, 2, 3, 4, 6, 8]),
            ways in 1u32..6,
            lru in any::<bool>(),
            addrs in prop::collection::vec(0u64..64 * 40, 1..400),
        ) {
            let policy = if lru { Replacement::Lru } else { Replacement::Fifo };
            let mut llc = Llc::new(&params(sets, ways, policy), 0);
            let mut r = Reference {
                sets: vec![VecDeque::new(); sets as usize],
                ways: ways as usize,
                lru,
            };
            for a in addrs {
                prop_assert_eq!(llc.access(a), r.access(a), "address {:#x}", a);
            }
        }

        /// Whatever the policy, a line just accessed hits, a set never holds more than its
        /// ways, and the same seed gives the same outcomes.
        #[test]
        fn every_policy_keeps_the_last_line_and_is_deterministic(
            policy in prop::sample::select(vec![
                Replacement::Lru, Replacement::Plru, Replacement::Random, Replacement::Fifo,
            ]),
            seed in any::<u64>(),
            addrs in prop::collection::vec(0u64..64 * 64, 1..300),
        ) {
            let p = params(4, 4, policy);
            let mut a = Llc::new(&p, seed);
            let mut b = Llc::new(&p, seed);
            for x in addrs {
                prop_assert_eq!(a.access(x), b.access(x));
                prop_assert!(a.access(x), "{:#x} missed right after its fill", x);
                b.access(x);
            }
            for set in a.tags.chunks(4) {
                let mut lines: Vec<_> = set.iter().filter(|&&t| t != EMPTY).collect();
                let n = lines.len();
                lines.sort();
                lines.dedup();
                prop_assert_eq!(lines.len(), n);
            }
        }
    }

    #[test]
    fn lines_share_a_tag_and_a_working_set_beyond_the_capacity_misses() {
        let mut llc = Llc::new(&params(2, 2, Replacement::Lru), 0);
        assert!(!llc.access(0x1000));
        // Same 64-byte line.
        assert!(llc.access(0x1038));
        // Three lines of one set cycled through its two ways under LRU: every access misses.
        let lines: Vec<u64> = (0..3).map(|i| 0x10_0000 + i * 128).collect();
        for _ in 0..3 {
            for &l in &lines {
                llc.access(l);
            }
        }
        assert!(lines.iter().all(|&l| !llc.access(l)));
    }

    #[test]
    fn plru_evicts_a_way_not_referenced_since_the_bits_were_cleared() {
        let mut llc = Llc::new(&params(1, 4, Replacement::Plru), 0);
        for i in 0..4 {
            llc.access(i * 64);
        }
        // Filling the fourth way cleared the others' bits: the next fill takes way 0.
        assert!(llc.access(3 * 64));
        assert!(!llc.access(4 * 64));
        assert!(!llc.access(0));
        assert!(llc.access(3 * 64));
    }
}
