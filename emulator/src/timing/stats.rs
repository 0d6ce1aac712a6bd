//! Latency histograms and walker-occupancy series for the engine's report: bounded memory,
//! no allocation per recorded value once a histogram has grown to the largest value seen.

use serde::Serialize;

/// Values below this are counted exactly.
const EXACT: u64 = 1 << 10;
/// Sub-buckets per power of two above [`EXACT`]: a bucket spans at most 1/512 of its values.
const SUB_BITS: u32 = 9;
const SUB: u64 = 1 << SUB_BITS;

/// A log-linear histogram of cycle counts: exact below 1024, within 1/512 (0.2 %) above.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

#[inline]
fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) - SUB;
    (EXACT + u64::from(e - (SUB_BITS + 1)) * SUB + mantissa) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let k = i - EXACT;
    let e = k / SUB + u64::from(SUB_BITS) + 1;
    let m = SUB + k % SUB;
    let shift = e - u64::from(SUB_BITS);
    ((m + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    /// Counts `v`.
    #[inline]
    pub fn record(&mut self, v: u64) {
        let b = bucket(v);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum += u128::from(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.min = if self.count == 0 {
            other.min
        } else {
            self.min.min(other.min)
        };
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The nearest-rank `p`-quantile (`p` in 0..=1): the smallest counted value v such that at
    /// least `ceil(p * count)` values are at most v — exact below 1024, otherwise the top of
    /// its bucket (never above the largest value counted). 0 when empty.
    pub fn quantile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// The distribution as (value, fraction of values at most it) points, one per non-empty
    /// bucket: a CDF to plot.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        let mut seen = 0;
        let mut out = Vec::new();
        for (i, n) in self.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            seen += n;
            let v = bucket_high(i).clamp(self.min, self.max);
            out.push((v, seen as f64 / self.count as f64));
        }
        out
    }

    /// Count, mean, p50, p90, p99 and max.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count,
            mean: if self.count == 0 {
                0.0
            } else {
                self.sum as f64 / self.count as f64
            },
            min: self.min,
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

/// A latency distribution in cycles.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencySummary {
    /// Translations counted.
    pub count: u64,
    /// Mean latency.
    pub mean: f64,
    /// Smallest latency.
    pub min: u64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest latency.
    pub max: u64,
}

/// The most samples an [`Occupancy`] series keeps: past it, neighbouring samples merge and the
/// interval doubles.
pub const MAX_SAMPLES: usize = 1024;
/// The first sampling interval, in cycles.
const FIRST_INTERVAL: u64 = 16;

/// Walker-busy cycles per fixed interval of time, for a plot of occupancy over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupancy {
    interval: u64,
    busy: Vec<u64>,
}

impl Default for Occupancy {
    fn default() -> Self {
        Self {
            interval: FIRST_INTERVAL,
            busy: Vec::new(),
        }
    }
}

/// One sample of walker occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OccupancySample {
    /// The interval's first cycle.
    pub start_cycle: u64,
    /// The interval's length in cycles.
    pub cycles: u64,
    /// Walker slots busy on average over the interval.
    pub mean_busy_walkers: f64,
}

impl Occupancy {
    /// Records a walker busy over cycles `[start, end)`.
    pub fn add(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        while (end - 1) / self.interval >= MAX_SAMPLES as u64 {
            self.coarsen();
        }
        let last = ((end - 1) / self.interval) as usize;
        if self.busy.len() <= last {
            self.busy.resize(last + 1, 0);
        }
        let mut t = start;
        while t < end {
            let i = (t / self.interval) as usize;
            let next = ((i as u64 + 1) * self.interval).min(end);
            self.busy[i] += next - t;
            t = next;
        }
    }

    /// Halves the resolution: merges neighbouring samples.
    fn coarsen(&mut self) {
        let merged: Vec<u64> = self.busy.chunks(2).map(|c| c.iter().sum()).collect();
        self.busy = merged;
        self.interval *= 2;
    }

    /// The samples, from cycle 0 to the last busy interval.
    pub fn samples(&self) -> Vec<OccupancySample> {
        self.busy
            .iter()
            .enumerate()
            .map(|(i, b)| OccupancySample {
                start_cycle: i as u64 * self.interval,
                cycles: self.interval,
                mean_busy_walkers: *b as f64 / self.interval as f64,
            })
            .collect()
    }

    /// Walker-busy cycles in all.
    pub fn total(&self) -> u64 {
        self.busy.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let mut h = Histogram::default();
        // Recorded out of order.
        for v in (1..=100).rev() {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(
            (s.count, s.min, s.p50, s.p90, s.p99, s.max),
            (100, 1, 50, 90, 99, 100)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.quantile(1.0), 100);
        let cdf = h.cdf();
        assert_eq!(cdf.len(), 100);
        assert_eq!(cdf[49], (50, 0.5));
    }

    #[test]
    fn a_skewed_distribution_has_its_tail_in_p99() {
        // 98 hits of 20 cycles, 2 walks of 5000: p99 (rank 99) is a walk.
        let mut h = Histogram::default();
        for _ in 0..98 {
            h.record(20);
        }
        h.record(5000);
        h.record(5000);
        assert_eq!(h.quantile(0.5), 20);
        assert_eq!(h.quantile(0.98), 20);
        assert_eq!(h.quantile(0.99), 5000);
        assert_eq!(h.summary().max, 5000);
    }

    proptest! {
        /// Against sorting: exact below 1024, within 1/512 above, never outside [min, max];
        /// merging two histograms equals recording everything in one.
        #[test]
        fn quantiles_match_the_sorted_values(
            mut vs in prop::collection::vec(prop_oneof![0u64..1024, 0u64..(1 << 40)], 1..300),
            p in 0.0f64..=1.0,
            split in 0usize..300,
        ) {
            let mut h = Histogram::default();
            let (mut a, mut b) = (Histogram::default(), Histogram::default());
            for (i, v) in vs.iter().enumerate() {
                h.record(*v);
                if i < split { a.record(*v) } else { b.record(*v) }
            }
            a.merge(&b);
            prop_assert_eq!(&a, &h);
            vs.sort_unstable();
            let rank = ((p * vs.len() as f64).ceil() as usize).max(1);
            let exact = vs[rank - 1];
            let got = h.quantile(p);
            if exact < EXACT {
                prop_assert_eq!(got, exact);
            } else {
                prop_assert!(got >= exact && got - exact <= exact / 512, "{} vs {}", got, exact);
            }
            prop_assert!(got >= vs[0] && got <= *vs.last().unwrap());
        }

        /// The buckets cover every value once, in order.
        #[test]
        fn buckets_are_ordered_and_bound_their_values(v in any::<u64>()) {
            let b = bucket(v);
            prop_assert!(bucket_high(b) >= v);
            if b > 0 {
                prop_assert!(bucket_high(b - 1) < v);
            }
        }

        /// Occupancy keeps every busy cycle whatever the coarsening.
        #[test]
        fn occupancy_keeps_every_busy_cycle(
            walks in prop::collection::vec((0u64..1 << 20, 0u64..5000), 1..100),
        ) {
            let mut o = Occupancy::default();
            let mut total = 0;
            for (s, len) in walks {
                o.add(s, s + len);
                total += len;
            }
            prop_assert_eq!(o.total(), total);
            prop_assert!(o.samples().len() <= MAX_SAMPLES);
        }
    }

    #[test]
    fn occupancy_samples_average_busy_walkers() {
        let mut o = Occupancy::default();
        // Two walkers busy over the first interval, one over half the second.
        o.add(0, 16);
        o.add(0, 24);
        let s = o.samples();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].start_cycle, s[0].cycles), (0, 16));
        assert!((s[0].mean_busy_walkers - 2.0).abs() < 1e-9);
        assert!((s[1].mean_busy_walkers - 0.5).abs() < 1e-9);
    }
}
