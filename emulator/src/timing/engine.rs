//! A deterministic discrete-event engine for many concurrent request streams: it places each
//! translation's [`Cost`] on the shared resources in time and reports latencies, walker
//! occupancy, throughput and queueing.
//!
//! # The resources and the order a translation takes them
//! 1. **The link to the IOMMU**: a pipeline accepting one transaction per cycle; the
//!    translation arrives `link_to_iommu` cycles after it entered.
//! 2. **Invalidation stall**: a translation reaching the IOMMU while the invalidation queue is
//!    processing waits until it is done (see [`Engine::invalidate`]).
//! 3. **Front-cache ports**: for the IOTLB, context and PASID caches, in the order the trace
//!    looked them up, one of the cache's `ports` for the cycles of its lookups.
//! 4. The cycles that queue for nothing (structure reads, fills, the miss path).
//! 5. **A walker slot**, for a cost with walk cycles — unless a walk of the same `page_key`
//!    is in flight: the translation then waits for that walk to end and takes no slot
//!    (coalescing, as gem5's `hazard4kCheck` holds a request behind an in-flight 4 KiB page).
//!    A translation without walk cycles (the function model found the page in the IOTLB,
//!    filled by a walk that is still in flight in time) waits the same way.
//! 6. **The link back**: one transaction per cycle.
//!
//! Resources serve requests in submission order, which must be nondecreasing arrival order:
//! a port or walker slot goes to the earliest submitted request that can use it, never back to
//! a later one that reaches it sooner (a request already placed is not moved). The link back is
//! a calendar instead (completions come back out of arrival order): a completion takes the first
//! free cycle at or after it is ready, within [`LINK_WINDOW`] cycles of the newest arrival
//! (beyond it, it is not delayed).
//!
//! # Determinism
//! The engine draws no random numbers: ties go to the lowest-numbered port or walker slot, and
//! the same submissions give the same completions. The seed is kept for the run's other
//! random choices, the [`CostModel`] of [`Engine::cost_model`] (its LLC's `random`
//! replacement), and reported.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::cost::{Cost, CostModel, FrontCache};
use super::params::TimingParams;
use super::stats::{Histogram, LatencySummary, Occupancy, OccupancySample};

/// How far past the newest arrival the link back keeps its calendar, in cycles.
pub const LINK_WINDOW: u64 = 1 << 16;
const LINK_WORDS: usize = (LINK_WINDOW / 64) as usize;

/// When a request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Completion {
    /// When the IOMMU began it: for a translation, after the link to the IOMMU and any
    /// invalidation stall; for an invalidation, when the queue took it.
    pub start: u64,
    /// When it was done: a translation's answer is back at the device; an invalidation has
    /// completed.
    pub done: u64,
    /// Cycles it waited for resources (link, ports, walker slot, invalidation, an in-flight
    /// walk), beyond its unloaded cost.
    pub queued_cycles: u64,
    /// Whether it waited for another request's walk instead of walking.
    pub coalesced: bool,
}

/// Per-stream bookkeeping.
#[derive(Debug, Clone, Default)]
struct StreamStats {
    stream: u32,
    latency: Histogram,
    walks: u64,
    coalesced: u64,
    queued_cycles: u64,
}

/// Queueing totals over the run, in cycles unless counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueueingReport {
    /// Translations that waited at all.
    pub queued_translations: u64,
    /// All translation waiting.
    pub queued_cycles: u64,
    /// Waiting for the link (either way).
    pub link_wait_cycles: u64,
    /// Waiting for a front-cache port.
    pub port_wait_cycles: u64,
    /// Waiting for a walker slot.
    pub walker_wait_cycles: u64,
    /// Waiting for an in-flight walk of the same page.
    pub coalesce_wait_cycles: u64,
    /// Translations stalled by invalidation processing, and their cycles.
    pub invalidation_stalls: u64,
    /// Cycles of those stalls.
    pub invalidation_stall_cycles: u64,
    /// Cycles the invalidation queue was busy.
    pub invalidation_busy_cycles: u64,
    /// Cycles invalidations waited for the queue.
    pub invalidation_queued_cycles: u64,
}

/// One stream's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamReport {
    /// The stream.
    pub stream: u32,
    /// Its translation latencies (arrival to done).
    pub latency: LatencySummary,
    /// Walks it took a slot for.
    pub walks: u64,
    /// Translations that waited for another's walk.
    pub coalesced: u64,
    /// Its waiting.
    pub queued_cycles: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineReport {
    /// The run's seed.
    pub seed: u64,
    /// The clock the per-second figures use.
    pub clock_ghz: f64,
    /// Walker slots.
    pub walkers: u32,
    /// Translations submitted.
    pub translations: u64,
    /// Walks that took a slot.
    pub walks: u64,
    /// Translations that waited for another's walk.
    pub coalesced: u64,
    /// Invalidations submitted.
    pub invalidations: u64,
    /// Submissions whose arrival was earlier than the one before (served as if they had
    /// arrived with it).
    pub reordered_arrivals: u64,
    /// The first arrival.
    pub first_arrival: u64,
    /// The last translation's completion.
    pub last_done: u64,
    /// `last_done - first_arrival`.
    pub span_cycles: u64,
    /// Translations per cycle over the span.
    pub translations_per_cycle: f64,
    /// Translations per second at `clock_ghz`.
    pub translations_per_second: f64,
    /// All translations' latencies.
    pub latency: LatencySummary,
    /// Per stream, by stream id.
    pub streams: Vec<StreamReport>,
    /// Walker-busy cycles.
    pub walker_busy_cycles: u64,
    /// Busy cycles over `walkers * span_cycles`.
    pub walker_utilization: f64,
    /// Mean busy walkers per interval, for a plot over time.
    pub occupancy: Vec<OccupancySample>,
    /// Queueing totals.
    pub queueing: QueueingReport,
}

/// The engine (see the module notes).
#[derive(Debug, Clone)]
pub struct Engine {
    seed: u64,
    params: TimingParams,
    link_in_free: u64,
    link_out: LinkCalendar,
    ports: [Vec<u64>; 3],
    walkers: Vec<u64>,
    inflight: FxHashMap<u64, u64>,
    inflight_max: u64,
    prune_at: usize,
    inv_free: u64,
    stalls: VecDeque<(u64, u64)>,
    last_arrival: u64,
    first_arrival: Option<u64>,
    last_done: u64,
    streams: Vec<StreamStats>,
    stream_index: FxHashMap<u32, usize>,
    last_stream: Option<(u32, usize)>,
    occupancy: Occupancy,
    translations: u64,
    walks: u64,
    coalesced: u64,
    invalidations: u64,
    reordered: u64,
    q: QueueingReport,
}

const PRUNE_MIN: usize = 4096;

impl Engine {
    /// An idle engine for `params` (validated by the caller).
    pub fn new(params: &TimingParams, seed: u64) -> Self {
        let ports = |n: u32| vec![0u64; n.max(1) as usize];
        let mut inflight = FxHashMap::default();
        inflight.reserve(PRUNE_MIN);
        Self {
            seed,
            params: params.clone(),
            link_in_free: 0,
            link_out: LinkCalendar::new(),
            ports: [
                ports(params.iotlb.ports),
                ports(params.context.ports),
                ports(params.pasid.ports),
            ],
            walkers: vec![0; params.walkers.max(1) as usize],
            inflight,
            inflight_max: 0,
            prune_at: PRUNE_MIN,
            inv_free: 0,
            stalls: VecDeque::new(),
            last_arrival: 0,
            first_arrival: None,
            last_done: 0,
            streams: Vec::new(),
            stream_index: FxHashMap::default(),
            last_stream: None,
            occupancy: Occupancy::default(),
            translations: 0,
            walks: 0,
            coalesced: 0,
            invalidations: 0,
            reordered: 0,
            q: QueueingReport::default(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A cost model of the same parameters, seeded with the engine's seed.
    pub fn cost_model(&self) -> CostModel {
        CostModel::with_seed(&self.params, self.seed)
    }

    /// Arrivals must not go back in time; one that does is served as arriving with the last.
    #[inline]
    fn arrive(&mut self, arrival: u64) -> u64 {
        if arrival < self.last_arrival {
            self.reordered += 1;
            return self.last_arrival;
        }
        self.last_arrival = arrival;
        self.link_out.advance(arrival);
        arrival
    }

    /// Places the translation of `stream` for `page_key` (any key naming the translated page,
    /// for coalescing) arriving at `arrival_cycle` with cost `cost`.
    pub fn translate(
        &mut self,
        arrival_cycle: u64,
        stream: u32,
        page_key: u64,
        cost: &Cost,
    ) -> Completion {
        let arrival = self.arrive(arrival_cycle);
        self.first_arrival.get_or_insert(arrival);
        let mut wait = Waits::default();
        // 1. The link to the IOMMU (arrivals are monotone: a counter serves).
        let mut t = arrival;
        if cost.link_to_iommu > 0 {
            let enter = t.max(self.link_in_free);
            wait.link += enter - t;
            self.link_in_free = enter + 1;
            t = enter + u64::from(cost.link_to_iommu);
        }
        // 2. Invalidation processing.
        if !self.stalls.is_empty() {
            let s = self.stalled_until(t);
            if s > t {
                wait.stall += s - t;
                t = s;
            }
        }
        let start = t;
        // 3. Front-cache ports.
        let mut front = 0u64;
        for u in cost.front() {
            let ports = &mut self.ports[front_index(u.cache)];
            let (i, free) = earliest(ports);
            let s = t.max(free);
            wait.port += s - t;
            t = s + u64::from(u.cycles);
            ports[i] = t;
            front += u64::from(u.cycles);
        }
        // 4. What queues for nothing.
        let links = u64::from(cost.link_to_iommu) + u64::from(cost.link_from_iommu);
        t += cost.total.saturating_sub(links + front + cost.walk_cycles);
        // 5. The walk, or the in-flight walk of the same page.
        let mut coalesced = false;
        if t < self.inflight_max
            && let Some(&end) = self.inflight.get(&page_key)
            && end > t
        {
            wait.coalesce += end - t;
            t = end;
            coalesced = true;
        } else if cost.needs_walker() {
            t = self.walk(t, page_key, cost.walk_cycles, &mut wait);
        }
        // 6. The link back.
        if cost.link_from_iommu > 0 {
            let exit = self.link_out.reserve(t);
            wait.link += exit - t;
            t = exit + u64::from(cost.link_from_iommu);
        }
        let c = Completion {
            start,
            done: t,
            queued_cycles: wait.total(),
            coalesced,
        };
        self.account(
            stream,
            arrival,
            &c,
            &wait,
            cost.needs_walker() && !coalesced,
        );
        c
    }

    /// Takes the earliest free walker slot at or after `t` for `cycles`; returns the end.
    fn walk(&mut self, t: u64, page_key: u64, cycles: u64, wait: &mut Waits) -> u64 {
        let (i, free) = earliest(&self.walkers);
        let s = t.max(free);
        wait.walker += s - t;
        let end = s + cycles;
        self.walkers[i] = end;
        self.occupancy.add(s, end);
        if self.inflight.len() >= self.prune_at {
            let now = self.last_arrival;
            self.inflight.retain(|_, e| *e > now);
            self.prune_at = (self.inflight.len() * 2).max(PRUNE_MIN);
        }
        self.inflight.insert(page_key, end);
        self.inflight_max = self.inflight_max.max(end);
        end
    }

    /// The end of the invalidation processing that covers `t`, if any (else `t`); forgets the
    /// windows that no later arrival can reach.
    fn stalled_until(&mut self, t: u64) -> u64 {
        let now = self.last_arrival;
        while self.stalls.front().is_some_and(|&(_, end)| end <= now) {
            self.stalls.pop_front();
        }
        let mut t = t;
        for &(s, e) in &self.stalls {
            if s <= t && t < e {
                t = e;
            }
        }
        t
    }

    /// Processes an invalidation of `descriptors` descriptors, `waits` of them wait
    /// descriptors, arriving at `arrival_cycle`. The queue takes it when the previous one is
    /// done and is busy for `descriptors * per_descriptor_cycles + waits * per_wait_cycles`.
    ///
    /// Race model: translations submitted after it that reach the IOMMU while it is processed
    /// stall until it completes (hardware that blocks lookups during the flush); translations
    /// submitted before it, and walks already under way, are not affected (the function model
    /// decides what they return: a walk that raced the invalidation cannot fill the caches,
    /// by its generation token).
    pub fn invalidate(&mut self, arrival_cycle: u64, descriptors: u32, waits: u32) -> Completion {
        let arrival = self.arrive(arrival_cycle);
        self.first_arrival.get_or_insert(arrival);
        let start = arrival.max(self.inv_free);
        let busy = u64::from(descriptors) * u64::from(self.params.queue.per_descriptor_cycles)
            + u64::from(waits) * u64::from(self.params.queue.per_wait_cycles);
        let done = start + busy;
        self.inv_free = done;
        if busy > 0 {
            self.stalls.push_back((start, done));
        }
        self.invalidations += 1;
        self.q.invalidation_busy_cycles += busy;
        self.q.invalidation_queued_cycles += start - arrival;
        Completion {
            start,
            done,
            queued_cycles: start - arrival,
            coalesced: false,
        }
    }

    #[inline]
    fn account(&mut self, stream: u32, arrival: u64, c: &Completion, w: &Waits, walked: bool) {
        self.translations += 1;
        self.last_done = self.last_done.max(c.done);
        self.walks += u64::from(walked);
        self.coalesced += u64::from(c.coalesced);
        if c.queued_cycles > 0 {
            let q = &mut self.q;
            q.queued_translations += 1;
            q.queued_cycles += c.queued_cycles;
            q.link_wait_cycles += w.link;
            q.port_wait_cycles += w.port;
            q.walker_wait_cycles += w.walker;
            q.coalesce_wait_cycles += w.coalesce;
            q.invalidation_stalls += u64::from(w.stall > 0);
            q.invalidation_stall_cycles += w.stall;
        }
        let s = self.stream(stream);
        s.latency.record(c.done - arrival);
        s.walks += u64::from(walked);
        s.coalesced += u64::from(c.coalesced);
        s.queued_cycles += c.queued_cycles;
    }

    #[inline]
    fn stream(&mut self, stream: u32) -> &mut StreamStats {
        let i = match self.last_stream {
            Some((id, i)) if id == stream => i,
            _ => {
                let next = self.streams.len();
                let i = *self.stream_index.entry(stream).or_insert(next);
                if i == next {
                    self.streams.push(StreamStats {
                        stream,
                        ..StreamStats::default()
                    });
                }
                self.last_stream = Some((stream, i));
                i
            }
        };
        &mut self.streams[i]
    }

    /// The latency distribution of `stream`, or of every stream, as CDF points.
    pub fn latency_cdf(&self, stream: Option<u32>) -> Vec<(u64, f64)> {
        self.histogram(stream).cdf()
    }

    fn histogram(&self, stream: Option<u32>) -> Histogram {
        let mut h = Histogram::default();
        for s in self
            .streams
            .iter()
            .filter(|s| stream.is_none_or(|id| id == s.stream))
        {
            h.merge(&s.latency);
        }
        h
    }

    /// What the run did so far.
    pub fn report(&self) -> EngineReport {
        let first = self.first_arrival.unwrap_or(0);
        let span = self.last_done.saturating_sub(first);
        let per_cycle = if span == 0 {
            0.0
        } else {
            self.translations as f64 / span as f64
        };
        let mut streams: Vec<StreamReport> = self
            .streams
            .iter()
            .map(|s| StreamReport {
                stream: s.stream,
                latency: s.latency.summary(),
                walks: s.walks,
                coalesced: s.coalesced,
                queued_cycles: s.queued_cycles,
            })
            .collect();
        streams.sort_by_key(|s| s.stream);
        let busy = self.occupancy.total();
        let slots = self.walkers.len() as f64 * span as f64;
        EngineReport {
            seed: self.seed,
            clock_ghz: self.params.clock_ghz,
            walkers: self.walkers.len() as u32,
            translations: self.translations,
            walks: self.walks,
            coalesced: self.coalesced,
            invalidations: self.invalidations,
            reordered_arrivals: self.reordered,
            first_arrival: first,
            last_done: self.last_done,
            span_cycles: span,
            translations_per_cycle: per_cycle,
            translations_per_second: per_cycle * self.params.clock_ghz * 1e9,
            latency: self.histogram(None).summary(),
            streams,
            walker_busy_cycles: busy,
            walker_utilization: if slots > 0.0 {
                busy as f64 / slots
            } else {
                0.0
            },
            occupancy: self.occupancy.samples(),
            queueing: self.q,
        }
    }
}

/// One translation's waits.
#[derive(Debug, Default)]
struct Waits {
    link: u64,
    stall: u64,
    port: u64,
    walker: u64,
    coalesce: u64,
}

impl Waits {
    fn total(&self) -> u64 {
        self.link + self.stall + self.port + self.walker + self.coalesce
    }
}

#[inline]
fn front_index(c: FrontCache) -> usize {
    match c {
        FrontCache::Iotlb => 0,
        FrontCache::Context => 1,
        FrontCache::Pasid => 2,
    }
}

/// The slot that frees first (the lowest-numbered on a tie) and when.
#[inline]
fn earliest(slots: &[u64]) -> (usize, u64) {
    let mut best = (0, slots[0]);
    for (i, &f) in slots.iter().enumerate().skip(1) {
        if f < best.1 {
            best = (i, f);
        }
    }
    best
}

/// The link back's reservations: one bit per cycle over [`LINK_WINDOW`] cycles from `base`.
#[derive(Debug, Clone)]
struct LinkCalendar {
    /// The first cycle kept, a multiple of 64.
    base: u64,
    words: Box<[u64; LINK_WORDS]>,
}

impl LinkCalendar {
    fn new() -> Self {
        Self {
            base: 0,
            words: Box::new([0; LINK_WORDS]),
        }
    }

    #[inline]
    fn word(&mut self, cycle: u64) -> &mut u64 {
        &mut self.words[((cycle / 64) as usize) % LINK_WORDS]
    }

    /// Forgets the cycles before `now` (no later request can be ready before it).
    #[inline]
    fn advance(&mut self, now: u64) {
        let target = now & !63;
        if target <= self.base {
            return;
        }
        if target - self.base >= LINK_WINDOW {
            self.words.fill(0);
        } else {
            let mut c = self.base;
            while c < target {
                *self.word(c) = 0;
                c += 64;
            }
        }
        self.base = target;
    }

    /// Takes the first free cycle at or after `t`.
    #[inline]
    fn reserve(&mut self, t: u64) -> u64 {
        let mut c = t.max(self.base);
        let end = self.base + LINK_WINDOW;
        while c < end {
            let bit = c % 64;
            let w = self.word(c);
            let free = !*w & (u64::MAX << bit);
            if free != 0 {
                let b = u64::from(free.trailing_zeros());
                *w |= 1 << b;
                return c - bit + b;
            }
            c = c - bit + 64;
        }
        // Beyond the window: not delayed.
        c.max(t)
    }
}
