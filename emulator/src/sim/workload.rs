//! The simulator's built-in workloads: streams of DMA requests with arrival times, as devices
//! issue them, and the IOVA regions each stream's domain maps.
//!
//! A DMA of `n` bytes reaches the IOMMU as PCIe requests of at most `tlp_bytes` each that do
//! not cross a 4 KiB boundary; each is one translation ([`SimRequest`]). Arrival times are in
//! cycles of the IOMMU's clock, from each stream's offered rate.
//!
//! | workload | what it models |
//! |---|---|
//! | `nic` | a NIC receiving packets of `packet_bytes` into a ring of `ring` recycled buffers of `buffer_bytes`, at `gbps` |
//! | `storage` | random reads of `io_bytes` over a file of `file_bytes`, at `iops` |
//! | `gpu` | sequential streaming reads of `chunk_bytes` over a buffer of `buffer_bytes`, at `gbps` |
//! | `tenants` | `tenants` NICs, each its own device and domain, sharing the IOMMU |

use crate::request::AccessKind;

/// One translation a device asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRequest {
    /// Arrival, in IOMMU cycles.
    pub t: u64,
    /// The stream (device) index; its requester id is [`stream_rid`].
    pub stream: u32,
    /// The PASID, if the request carries one.
    pub pasid: Option<u32>,
    /// The input address.
    pub addr: u64,
    /// Bytes.
    pub len: u64,
    /// Read or write.
    pub access: AccessKind,
    /// On the last request of a DMA after which the device's driver unmaps the buffer and
    /// maps it again (the DMA API's per-packet map and unmap): the buffer's IOVA range.
    pub remap: Option<(u64, u64)>,
}

/// The requester id of stream `s`: bus 1 upwards, one function per stream.
pub fn stream_rid(s: u32) -> u16 {
    0x0100u16.wrapping_add(s as u16)
}

/// An IOVA range a stream's domain maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The stream.
    pub stream: u32,
    /// First IOVA (aligned to the page size the platform maps with).
    pub iova: u64,
    /// Bytes.
    pub len: u64,
}

/// Which built-in workload, with its knobs.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadKind {
    /// A NIC receiving into a ring of recycled buffers.
    Nic {
        /// Buffers in the ring.
        ring: u64,
        /// Bytes per buffer.
        buffer_bytes: u64,
        /// Bytes per packet (at most a buffer).
        packet_bytes: u64,
        /// Offered load, Gb/s.
        gbps: f64,
    },
    /// Random reads over a large file.
    Storage {
        /// The file's size.
        file_bytes: u64,
        /// Bytes per read.
        io_bytes: u64,
        /// Reads per second.
        iops: f64,
    },
    /// Sequential streaming reads.
    Gpu {
        /// The buffer streamed over, again and again.
        buffer_bytes: u64,
        /// Bytes per DMA.
        chunk_bytes: u64,
        /// Offered load, Gb/s.
        gbps: f64,
    },
    /// Several NICs, each its own device and domain.
    Tenants {
        /// How many.
        tenants: u32,
        /// Buffers per ring.
        ring: u64,
        /// Bytes per buffer.
        buffer_bytes: u64,
        /// Bytes per packet.
        packet_bytes: u64,
        /// Offered load of each, Gb/s.
        gbps: f64,
    },
}

impl WorkloadKind {
    /// The workload's name.
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::Nic { .. } => "nic",
            WorkloadKind::Storage { .. } => "storage",
            WorkloadKind::Gpu { .. } => "gpu",
            WorkloadKind::Tenants { .. } => "tenants",
        }
    }

    /// The defaults of workload `name`: a 200 Gb/s NIC with 4096 2 KiB buffers (8 MiB, beyond
    /// a 1024-entry IOTLB's 4 MiB reach with 4 KiB pages); 4 KiB random reads at 1 M IOPS over
    /// 1 GiB; 64 KiB streaming at 100 Gb/s over 256 MiB; four 50 Gb/s tenants.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "nic" => WorkloadKind::Nic {
                ring: 4096,
                buffer_bytes: 2048,
                packet_bytes: 1500,
                gbps: 200.0,
            },
            "storage" => WorkloadKind::Storage {
                file_bytes: 1 << 30,
                io_bytes: 4096,
                iops: 1e6,
            },
            "gpu" => WorkloadKind::Gpu {
                buffer_bytes: 256 << 20,
                chunk_bytes: 64 << 10,
                gbps: 100.0,
            },
            "tenants" => WorkloadKind::Tenants {
                tenants: 4,
                ring: 1024,
                buffer_bytes: 2048,
                packet_bytes: 1500,
                gbps: 50.0,
            },
            _ => return None,
        })
    }

    /// The names [`WorkloadKind::by_name`] knows.
    pub const NAMES: [&'static str; 4] = ["nic", "storage", "gpu", "tenants"];

    /// Where each stream's buffers live: one contiguous IOVA range per stream from 1 GiB up,
    /// each rounded up to `align` (the page size the platform maps with).
    pub fn regions(&self, align: u64) -> Vec<Region> {
        let up = |n: u64| n.div_ceil(align) * align;
        let base = 1u64 << 30;
        match *self {
            WorkloadKind::Nic {
                ring, buffer_bytes, ..
            } => vec![Region {
                stream: 0,
                iova: base,
                len: up(ring * buffer_bytes),
            }],
            WorkloadKind::Storage { file_bytes, .. } => vec![Region {
                stream: 0,
                iova: base,
                len: up(file_bytes),
            }],
            WorkloadKind::Gpu { buffer_bytes, .. } => vec![Region {
                stream: 0,
                iova: base,
                len: up(buffer_bytes),
            }],
            WorkloadKind::Tenants {
                tenants,
                ring,
                buffer_bytes,
                ..
            } => (0..tenants)
                .map(|s| Region {
                    stream: s,
                    iova: base,
                    len: up(ring * buffer_bytes),
                })
                .collect(),
        }
    }

    /// The streams.
    pub fn streams(&self) -> u32 {
        match self {
            WorkloadKind::Tenants { tenants, .. } => *tenants,
            _ => 1,
        }
    }

    /// Checks the knobs.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{}: {what} must be positive, not {v}", self.name()))
            }
        };
        match *self {
            WorkloadKind::Nic {
                ring,
                buffer_bytes,
                packet_bytes,
                gbps,
            }
            | WorkloadKind::Tenants {
                ring,
                buffer_bytes,
                packet_bytes,
                gbps,
                ..
            } => {
                pos("ring", ring as f64)?;
                pos("gbps", gbps)?;
                if packet_bytes == 0 || packet_bytes > buffer_bytes {
                    return Err(format!(
                        "{}: a packet of {packet_bytes} bytes does not fit a {buffer_bytes}-byte buffer",
                        self.name()
                    ));
                }
                if let WorkloadKind::Tenants { tenants, .. } = *self {
                    pos("tenants", f64::from(tenants))?;
                }
                Ok(())
            }
            WorkloadKind::Storage {
                file_bytes,
                io_bytes,
                iops,
            } => {
                pos("iops", iops)?;
                if io_bytes == 0 || io_bytes > file_bytes {
                    return Err(format!(
                        "storage: reads of {io_bytes} bytes do not fit a {file_bytes}-byte file"
                    ));
                }
                Ok(())
            }
            WorkloadKind::Gpu {
                buffer_bytes,
                chunk_bytes,
                gbps,
            } => {
                pos("gbps", gbps)?;
                if chunk_bytes == 0 || chunk_bytes > buffer_bytes {
                    return Err(format!(
                        "gpu: chunks of {chunk_bytes} bytes do not fit a {buffer_bytes}-byte buffer"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A small, fast, seeded generator (SplitMix64), so a run is the same for a seed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// One stream's DMA source: the next DMA's address, length and direction.
#[derive(Debug, Clone)]
struct Stream {
    /// Cycles between DMAs.
    period: f64,
    /// The next DMA's arrival, in cycles (fractional, so rates are exact on average).
    next: f64,
    /// How many DMAs so far.
    count: u64,
}

/// What is left of the DMA a generator is splitting into requests.
#[derive(Debug, Clone, Copy)]
struct PendingDma {
    stream: u32,
    /// The next request's address.
    addr: u64,
    /// The DMA's end.
    end: u64,
    access: AccessKind,
    /// Its arrival.
    t: u64,
    /// The buffer its driver remaps after it.
    remap: Option<(u64, u64)>,
}

/// The requests of a workload, in arrival order, with `tlp_bytes` per request.
#[derive(Debug, Clone)]
pub struct Generator {
    kind: WorkloadKind,
    streams: Vec<Stream>,
    rng: SplitMix,
    tlp_bytes: u64,
    /// The current DMA's requests still to hand out.
    pending: Option<PendingDma>,
    /// Every how many DMAs of a ring stream its driver remaps the buffer (0: never).
    remap_every: u64,
}

impl Generator {
    /// Requests of `kind` at a clock of `clock_ghz`, split into requests of at most
    /// `tlp_bytes` (and never across 4 KiB), seeded with `seed`.
    pub fn new(kind: &WorkloadKind, clock_ghz: f64, tlp_bytes: u64, seed: u64) -> Self {
        let cycles_per_s = clock_ghz * 1e9;
        let period = |bytes: u64, gbps: f64| bytes as f64 * 8.0 / (gbps * 1e9) * cycles_per_s;
        let one = |p: f64| {
            vec![Stream {
                period: p,
                next: 0.0,
                count: 0,
            }]
        };
        let streams = match *kind {
            WorkloadKind::Nic {
                packet_bytes, gbps, ..
            } => one(period(packet_bytes, gbps)),
            WorkloadKind::Storage { iops, .. } => one(cycles_per_s / iops),
            WorkloadKind::Gpu {
                chunk_bytes, gbps, ..
            } => one(period(chunk_bytes, gbps)),
            WorkloadKind::Tenants {
                tenants,
                packet_bytes,
                gbps,
                ..
            } => {
                let p = period(packet_bytes, gbps);
                // Staggered so the tenants interleave rather than arrive together.
                (0..tenants)
                    .map(|s| Stream {
                        period: p,
                        next: p * f64::from(s) / f64::from(tenants),
                        count: 0,
                    })
                    .collect()
            }
        };
        Generator {
            kind: kind.clone(),
            streams,
            rng: SplitMix::new(seed),
            tlp_bytes: tlp_bytes.clamp(1, 4096),
            pending: None,
            remap_every: 0,
        }
    }

    /// For the ring workloads (`nic`, `tenants`): every `every` packets of a stream, the
    /// driver unmaps the buffer just filled and maps it again, as the DMA API's strict mode
    /// does for every packet (`every` = 1); the invalidations that takes are the unit's real
    /// queue work. 0 never remaps; the other workloads ignore it.
    pub fn with_remap_every(mut self, every: u64) -> Self {
        self.remap_every = every;
        self
    }

    /// The buffer the ring stream's DMA number `n` (from 1) fills, if its driver remaps it
    /// after.
    fn remap_after(&self, addr: u64, n: u64) -> Option<(u64, u64)> {
        let buffer = match self.kind {
            WorkloadKind::Nic { buffer_bytes, .. } | WorkloadKind::Tenants { buffer_bytes, .. } => {
                buffer_bytes
            }
            _ => return None,
        };
        (self.remap_every > 0 && n.is_multiple_of(self.remap_every)).then_some((addr, buffer))
    }

    /// The next DMA of stream `s`: (address, bytes, access).
    fn dma(&mut self, s: u32) -> (u64, u64, AccessKind) {
        let base = 1u64 << 30;
        let n = self.streams[s as usize].count;
        match self.kind {
            WorkloadKind::Nic {
                ring,
                buffer_bytes,
                packet_bytes,
                ..
            }
            | WorkloadKind::Tenants {
                ring,
                buffer_bytes,
                packet_bytes,
                ..
            } => (
                base + (n % ring) * buffer_bytes,
                packet_bytes,
                AccessKind::Write,
            ),
            WorkloadKind::Storage {
                file_bytes,
                io_bytes,
                ..
            } => {
                let blocks = file_bytes / io_bytes;
                (
                    base + self.rng.below(blocks) * io_bytes,
                    io_bytes,
                    AccessKind::Read,
                )
            }
            WorkloadKind::Gpu {
                buffer_bytes,
                chunk_bytes,
                ..
            } => {
                let chunks = buffer_bytes / chunk_bytes;
                (
                    base + (n % chunks) * chunk_bytes,
                    chunk_bytes,
                    AccessKind::Read,
                )
            }
        }
    }
}

impl Iterator for Generator {
    type Item = SimRequest;

    fn next(&mut self) -> Option<SimRequest> {
        loop {
            if let Some(p) = self.pending {
                // The next request: up to tlp_bytes, never across a 4 KiB boundary.
                let page_end = (p.addr | 0xfff) + 1;
                let len = self.tlp_bytes.min(p.end - p.addr).min(page_end - p.addr);
                let last = p.addr + len >= p.end;
                self.pending = (!last).then_some(PendingDma {
                    addr: p.addr + len,
                    ..p
                });
                return Some(SimRequest {
                    t: p.t,
                    stream: p.stream,
                    pasid: None,
                    addr: p.addr,
                    len,
                    access: p.access,
                    remap: if last { p.remap } else { None },
                });
            }

            // The stream whose next DMA arrives first (the lowest index on a tie).
            let (s, _) = self
                .streams
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.next.total_cmp(&b.1.next))?;
            let s = s as u32;
            let t = self.streams[s as usize].next.round() as u64;
            let (addr, len, access) = self.dma(s);
            let st = &mut self.streams[s as usize];
            st.count += 1;
            st.next += st.period;
            let n = st.count;
            let remap = self.remap_after(addr, n);
            self.pending = Some(PendingDma {
                stream: s,
                addr,
                end: addr + len,
                access,
                t,
                remap,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_packet_is_split_into_requests_within_4k_and_the_ring_recycles() {
        let kind = WorkloadKind::Nic {
            ring: 4,
            buffer_bytes: 2048,
            packet_bytes: 1500,
            gbps: 100.0,
        };
        let reqs: Vec<SimRequest> = Generator::new(&kind, 2.0, 256, 1).take(6 * 5).collect();
        // 1500 bytes in 256-byte requests: 5 full and one of 220.
        assert_eq!(reqs[..6].iter().map(|r| r.len).sum::<u64>(), 1500);
        assert_eq!(reqs[5].len, 1500 - 5 * 256);
        assert!(reqs.iter().all(|r| r.access == AccessKind::Write));
        // Packets arrive every 1500 * 8 / 100e9 s = 120 ns = 240 cycles at 2 GHz.
        assert_eq!(reqs[6].t, 240);
        assert_eq!(reqs[0].t, reqs[5].t);
        // The fifth packet lands in the first buffer again.
        assert_eq!(reqs[24].addr, reqs[0].addr);
        assert_eq!(reqs[6].addr, (1 << 30) + 2048);
        // A request never crosses a 4 KiB boundary.
        for r in &reqs {
            assert_eq!(r.addr >> 12, (r.addr + r.len - 1) >> 12, "{r:?}");
        }
    }

    #[test]
    fn a_remapping_ring_marks_the_last_request_of_every_nth_packet() {
        let kind = WorkloadKind::Nic {
            ring: 4,
            buffer_bytes: 2048,
            packet_bytes: 1500,
            gbps: 100.0,
        };
        let reqs: Vec<SimRequest> = Generator::new(&kind, 2.0, 256, 1)
            .with_remap_every(2)
            .take(6 * 4)
            .collect();
        let marked: Vec<(usize, Option<(u64, u64)>)> = reqs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.remap.is_some())
            .map(|(i, r)| (i, r.remap))
            .collect();
        // Packets 2 and 4 (requests 6..12 and 18..24), each marked on its last request.
        assert_eq!(
            marked,
            [
                (11, Some(((1 << 30) + 2048, 2048))),
                (23, Some(((1 << 30) + 3 * 2048, 2048)))
            ]
        );
        let storage = WorkloadKind::by_name("storage").unwrap();
        assert!(
            Generator::new(&storage, 2.0, 4096, 1)
                .with_remap_every(1)
                .take(100)
                .all(|r| r.remap.is_none())
        );
    }

    #[test]
    fn storage_reads_are_random_aligned_and_reproducible() {
        let kind = WorkloadKind::by_name("storage").unwrap();
        let a: Vec<SimRequest> = Generator::new(&kind, 2.0, 4096, 7).take(1000).collect();
        let b: Vec<SimRequest> = Generator::new(&kind, 2.0, 4096, 7).take(1000).collect();
        let c: Vec<SimRequest> = Generator::new(&kind, 2.0, 4096, 8).take(1000).collect();
        assert_eq!(a, b, "the same seed, the same requests");
        assert_ne!(a, c);
        let region = kind.regions(4096)[0];
        for r in &a {
            assert_eq!(r.len, 4096);
            assert_eq!(r.addr % 4096, 0);
            assert!((region.iova..region.iova + region.len).contains(&r.addr));
        }
        // Arrivals every 2000 cycles (1 M IOPS at 2 GHz), nondecreasing.
        assert_eq!(a[1].t, 2000);
        assert!(a.windows(2).all(|w| w[0].t <= w[1].t));
    }

    #[test]
    fn tenants_interleave_each_on_its_own_stream() {
        let kind = WorkloadKind::by_name("tenants").unwrap();
        let reqs: Vec<SimRequest> = Generator::new(&kind, 2.0, 4096, 1).take(8).collect();
        let streams: Vec<u32> = reqs.iter().map(|r| r.stream).collect();
        assert_eq!(streams, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert!(reqs.windows(2).all(|w| w[0].t <= w[1].t));
        assert_eq!(kind.regions(4096).len(), 4);
        assert_ne!(stream_rid(0), stream_rid(1));
    }

    #[test]
    fn regions_round_up_to_the_page_size_and_bad_knobs_are_refused() {
        let nic = WorkloadKind::by_name("nic").unwrap();
        assert_eq!(nic.regions(4096)[0].len, 8 << 20);
        assert_eq!(nic.regions(2 << 20)[0].len, 8 << 20);
        let gpu = WorkloadKind::Gpu {
            buffer_bytes: 3 << 20,
            chunk_bytes: 1 << 16,
            gbps: 1.0,
        };
        assert_eq!(gpu.regions(2 << 20)[0].len, 4 << 20);
        for k in WorkloadKind::NAMES {
            WorkloadKind::by_name(k).unwrap().validate().unwrap();
        }
        let bad = WorkloadKind::Nic {
            ring: 4,
            buffer_bytes: 1024,
            packet_bytes: 1500,
            gbps: 1.0,
        };
        assert!(bad.validate().unwrap_err().contains("does not fit"));
        let bad = WorkloadKind::Storage {
            file_bytes: 1 << 20,
            io_bytes: 4096,
            iops: 0.0,
        };
        assert!(bad.validate().unwrap_err().contains("positive"));
    }
}
