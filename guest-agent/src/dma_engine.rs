//! The DMA engine endpoint (PCI 1234:1dae, served by vhost-device-iommu over vfio-user): its
//! BAR0 registers, its 32-byte descriptors, the IOVA layout `guest-agent dma-engine` uses, and
//! the page-by-page identity-mapped descriptors of `dma-engine --identity` ([`PageFrames`]).
//!
//! Register file (BAR0, little-endian; a 64-bit register is two 32-bit halves, low half first,
//! and 64-bit accesses to it also work):
//!
//! | off | name | |
//! |---|---|---|
//! | 0x000 | ID | RO, [`ENGINE_ID`] |
//! | 0x004 | CAP | RO, see [`Cap`] |
//! | 0x008 | CONTROL | RW, [`CONTROL_IE`], [`CONTROL_RESET`] |
//! | 0x00c | STATUS | R/W1C, see [`Status`] |
//! | 0x010 | INT_STATUS | R/W1C, [`INT_PENDING`] |
//! | 0x018 | ERROR_ADDR | RO 64, the IOVA of the failed access |
//! | 0x020 | ERROR_INFO | RO, IOMMU fault code (15:0), write (16), PASID (17) |
//! | 0x028 | DESC_BASE | RW 64, IOVA of descriptor 0 (32-byte aligned) |
//! | 0x030 | DOORBELL | WO, run n (1..=256) descriptors synchronously |
//! | 0x034 | DESC_PASID | RW, valid (31), PASID (19:0) for descriptor fetches |
//! | 0x038 | TOTAL_DESC | RO, descriptors completed since the device was created |
//! | 0x040 | TOTAL_BYTES | RO 64, bytes written by completed descriptors |
//! | 0x048 | TOTAL_ERRORS | RO, batches that stopped on an error |

/// `ID` (RO).
pub const REG_ID: u64 = 0x000;
/// `CAP` (RO).
pub const REG_CAP: u64 = 0x004;
/// `CONTROL` (RW).
pub const REG_CONTROL: u64 = 0x008;
/// `STATUS` (R/W1C).
pub const REG_STATUS: u64 = 0x00c;
/// `INT_STATUS` (R/W1C).
pub const REG_INT_STATUS: u64 = 0x010;
/// `ERROR_ADDR` (RO, 64-bit).
pub const REG_ERROR_ADDR: u64 = 0x018;
/// `ERROR_INFO` (RO).
pub const REG_ERROR_INFO: u64 = 0x020;
/// `DESC_BASE` (RW, 64-bit).
pub const REG_DESC_BASE: u64 = 0x028;
/// `DOORBELL` (WO).
pub const REG_DOORBELL: u64 = 0x030;
/// `DESC_PASID` (RW).
pub const REG_DESC_PASID: u64 = 0x034;
/// `TOTAL_DESC` (RO).
pub const REG_TOTAL_DESC: u64 = 0x038;
/// `TOTAL_BYTES` (RO, 64-bit).
pub const REG_TOTAL_BYTES: u64 = 0x040;
/// `TOTAL_ERRORS` (RO).
pub const REG_TOTAL_ERRORS: u64 = 0x048;

/// The BAR0 size the device has (4 KiB).
pub const BAR0_SIZE: u64 = 0x1000;
/// What `ID` reads: "EAMD" little-endian.
pub const ENGINE_ID: u32 = 0x444d_4145;
/// PCI vendor ID.
pub const PCI_VENDOR: u16 = 0x1234;
/// PCI device ID.
pub const PCI_DEVICE: u16 = 0x1dae;

/// `CONTROL` bit 0 (IE): raise the interrupt when a doorbell's batch ends.
pub const CONTROL_IE: u32 = 1 << 0;
/// `CONTROL` bit 31 (RESET, write only): reset the registers (counters kept).
pub const CONTROL_RESET: u32 = 1 << 31;

/// `STATUS` bit 0: the last batch ran to its end.
pub const STATUS_DONE: u32 = 1 << 0;
/// `STATUS` bit 1: the last batch stopped on an error.
pub const STATUS_ERROR: u32 = 1 << 1;
/// `STATUS` bit 2: a COMPARE of the last batch found a difference.
pub const STATUS_MISCOMPARE: u32 = 1 << 2;
/// The `STATUS` bits written as ones to clear them (DONE, ERROR with ERROR_CODE, MISCOMPARE).
pub const STATUS_W1C: u32 = STATUS_DONE | STATUS_ERROR | STATUS_MISCOMPARE;
/// `INT_STATUS` bit 0: a completion interrupt is pending.
pub const INT_PENDING: u32 = 1 << 0;

/// The most descriptors one doorbell runs.
pub const MAX_BATCH: u32 = 256;
/// The largest descriptor length, 16 MiB.
pub const MAX_LEN: u32 = 16 << 20;

/// Error codes (`STATUS.ERROR_CODE`, and the low bits of an error `RESULT`).
pub mod code {
    /// The descriptor fetch faulted.
    pub const DESC_FAULT: u8 = 1;
    /// A read of the source faulted.
    pub const SRC_FAULT: u8 = 2;
    /// A write of the destination faulted.
    pub const DST_FAULT: u8 = 3;
    /// The IOMMU translated the access outside every DMA region the VMM gave the device.
    pub const NOT_RAM: u8 = 4;
    /// Unknown opcode, LEN 0 or too large, or PASID set when unsupported.
    pub const BAD_DESC: u8 = 5;
    /// A doorbell of 0 or more than 256 descriptors.
    pub const BAD_DOORBELL: u8 = 6;
    /// `COMMAND.BME` was clear.
    pub const NO_BUS_MASTER: u8 = 7;
    /// The RESULT write-back faulted.
    pub const RESULT_FAULT: u8 = 8;

    /// The code's name, or `"unknown"`.
    pub fn name(code: u8) -> &'static str {
        match code {
            0 => "none",
            DESC_FAULT => "DESC_FAULT",
            SRC_FAULT => "SRC_FAULT",
            DST_FAULT => "DST_FAULT",
            NOT_RAM => "NOT_RAM",
            BAD_DESC => "BAD_DESC",
            BAD_DOORBELL => "BAD_DOORBELL",
            NO_BUS_MASTER => "NO_BUS_MASTER",
            RESULT_FAULT => "RESULT_FAULT",
            _ => "unknown",
        }
    }
}

/// A descriptor's RESULT after it completed.
pub const RESULT_OK: u32 = 1;
/// A COMPARE descriptor's RESULT when the buffers differ.
pub const RESULT_MISCOMPARE: u32 = 2;
/// Set in RESULT (with the error code in the low bits) when the descriptor failed.
pub const RESULT_ERROR: u32 = 0x80;

/// The `STATUS` register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    /// Bit 0: the last batch ran to its end.
    pub fn done(self) -> bool {
        self.0 & STATUS_DONE != 0
    }

    /// Bit 1: the last batch stopped on an error.
    pub fn error(self) -> bool {
        self.0 & STATUS_ERROR != 0
    }

    /// Bit 2: a COMPARE found a difference.
    pub fn miscompare(self) -> bool {
        self.0 & STATUS_MISCOMPARE != 0
    }

    /// Whether the last batch ended, one way or the other.
    pub fn ended(self) -> bool {
        self.done() || self.error()
    }

    /// Bits 15:8: the error code of the last batch's failure.
    pub fn error_code(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Bits 31:16: descriptors the last batch completed.
    pub fn count(self) -> u16 {
        (self.0 >> 16) as u16
    }
}

/// The `CAP` register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u32);

impl Cap {
    /// Bits 7:0: the version (1).
    pub fn version(self) -> u8 {
        self.0 as u8
    }

    /// Bit 8: descriptors may carry a PASID.
    pub fn pasid(self) -> bool {
        self.0 & (1 << 8) != 0
    }

    /// Bits 23:16: log2 of the largest descriptor length.
    pub fn max_len_log2(self) -> u8 {
        (self.0 >> 16) as u8
    }

    /// Bits 31:24: log2 of the most descriptors per doorbell.
    pub fn max_batch_log2(self) -> u8 {
        (self.0 >> 24) as u8
    }
}

/// A descriptor opcode (`CTRL` bits 3:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Opcode {
    /// Copy LEN bytes from SRC to DST.
    Copy = 1,
    /// Fill LEN bytes at DST with the 8-byte pattern held in SRC, repeated from its first
    /// (least significant) byte.
    Fill = 2,
    /// Compare LEN bytes at SRC with DST.
    Compare = 3,
}

/// `CTRL` bit 8: the data accesses carry the descriptor's PASID.
pub const CTRL_PASID_VALID: u32 = 1 << 8;
/// `CTRL` bit 9: privileged accesses.
pub const CTRL_PRIVILEGED: u32 = 1 << 9;

/// The size of a descriptor, in bytes.
pub const DESC_SIZE: usize = 32;
/// The offset of `RESULT` in a descriptor.
pub const RESULT_OFFSET: usize = 0x1c;

/// One 32-byte descriptor, as it lies in memory at `DESC_BASE + 32 * i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// `CTRL`: opcode (3:0), PASID valid (8), privileged (9).
    pub ctrl: u32,
    /// `PASID` (19:0).
    pub pasid: u32,
    /// `SRC`: source IOVA, or the FILL pattern.
    pub src: u64,
    /// `DST`: destination IOVA, or COMPARE's second buffer.
    pub dst: u64,
    /// `LEN` in bytes, 1..=16 MiB.
    pub len: u32,
    /// `RESULT`, written back by the engine; 0 when the agent writes the descriptor.
    pub result: u32,
}

impl Descriptor {
    fn new(op: Opcode, src: u64, dst: u64, len: u32) -> Self {
        Descriptor {
            ctrl: op as u32,
            pasid: 0,
            src,
            dst,
            len,
            result: 0,
        }
    }

    /// COPY `len` bytes from `src` to `dst`.
    pub fn copy(src: u64, dst: u64, len: u32) -> Self {
        Self::new(Opcode::Copy, src, dst, len)
    }

    /// FILL `len` bytes at `dst` with `pattern` (its little-endian bytes, repeated).
    pub fn fill(dst: u64, pattern: u64, len: u32) -> Self {
        Self::new(Opcode::Fill, pattern, dst, len)
    }

    /// COMPARE `len` bytes at `a` with `b`.
    pub fn compare(a: u64, b: u64, len: u32) -> Self {
        Self::new(Opcode::Compare, a, b, len)
    }

    /// The little-endian bytes the engine reads.
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0x00..0x04].copy_from_slice(&self.ctrl.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&self.pasid.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&self.src.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&self.dst.to_le_bytes());
        b[0x18..0x1c].copy_from_slice(&self.len.to_le_bytes());
        b[0x1c..0x20].copy_from_slice(&self.result.to_le_bytes());
        b
    }

    /// Decodes 32 little-endian bytes.
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Descriptor {
            ctrl: u32_at(0x00),
            pasid: u32_at(0x04),
            src: u64_at(0x08),
            dst: u64_at(0x10),
            len: u32_at(0x18),
            result: u32_at(0x1c),
        }
    }
}

/// The RESULT word of descriptor slot `i` in a descriptor page's bytes, if the page holds it.
pub fn result_at(page: &[u8], i: usize) -> Option<u32> {
    let o = i.checked_mul(DESC_SIZE)?.checked_add(RESULT_OFFSET)?;
    let w = page.get(o..o.checked_add(4)?)?;
    Some(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// Whether every byte of `buf` is the FILL of `pattern`: byte `i` is byte `i % 8` of the
/// pattern's little-endian form.
pub fn holds_pattern(buf: &[u8], pattern: u64) -> bool {
    let p = pattern.to_le_bytes();
    buf.iter().enumerate().all(|(i, &b)| b == p[i % 8])
}

/// Lower-case hexadecimal of `bytes`, two digits per byte, no separator.
pub fn hex_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// RESULT words as a report value: comma-separated, small values in decimal and error
/// results (with [`RESULT_ERROR`]) in hexadecimal (`1,1,0x83`).
pub fn results_list(results: &[u32]) -> String {
    results
        .iter()
        .map(|&r| {
            if r & RESULT_ERROR != 0 {
                format!("{r:#x}")
            } else {
                r.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The pattern `dma-engine`'s first batch fills the source with.
pub const FILL_PATTERN: u64 = 0x0123_4567_89ab_cdef;
/// How far above the command's first IOVA the unmapped IOVA of the fault batch lies (256 MiB).
pub const UNMAPPED_OFFSET: u64 = 256 << 20;

/// The IOVAs of `dma-engine`: a descriptor page, then the source and destination buffers of
/// `pages` pages each, back to back; and an IOVA nothing is mapped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The descriptor page.
    pub desc: u64,
    /// The source buffer.
    pub src: u64,
    /// The destination buffer.
    pub dst: u64,
    /// Bytes in each of source and destination.
    pub len: u64,
    /// An IOVA [`UNMAPPED_OFFSET`] above `desc`, past the mappings.
    pub unmapped: u64,
}

impl Layout {
    /// The layout from IOVA `iova` with buffers of `pages` pages of `page_size` bytes, or
    /// `None` if it overflows, leaves no room below the unmapped IOVA, or a buffer is longer
    /// than one descriptor moves.
    pub fn new(iova: u64, pages: u64, page_size: u64) -> Option<Self> {
        let len = pages.checked_mul(page_size)?;
        let src = iova.checked_add(page_size)?;
        let dst = src.checked_add(len)?;
        let end = dst.checked_add(len)?;
        let unmapped = iova.checked_add(UNMAPPED_OFFSET)?;
        if len == 0 || len > u64::from(MAX_LEN) || end > unmapped {
            return None;
        }
        Some(Layout {
            desc: iova,
            src,
            dst,
            len,
            unmapped,
        })
    }

    /// The IOVAs the layout maps: from the descriptor page to the end of the destination.
    pub fn span(&self) -> std::ops::Range<u64> {
        // No overflow: `new` checked `dst + len` (and `at` too).
        self.desc..self.dst + self.len
    }

    /// The same layout moved so that its descriptor page lies at `desc`, or `None` if an
    /// address of it, or the end of its span, overflows.
    pub fn at(&self, desc: u64) -> Option<Self> {
        let moved = |a: u64| a.checked_sub(self.desc)?.checked_add(desc);
        let l = Layout {
            desc,
            src: moved(self.src)?,
            dst: moved(self.dst)?,
            len: self.len,
            unmapped: moved(self.unmapped)?,
        };
        l.dst.checked_add(l.len)?;
        Some(l)
    }
}

/// What a copy batch (FILL the source, COPY it to the destination, COMPARE the two) left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheck {
    /// `STATUS` once the batch ended.
    pub status: Status,
    /// The descriptors' RESULT words, in order.
    pub results: Vec<u32>,
    /// Whether the completion interrupt arrived.
    pub irq: bool,
    /// Whether the source holds [`FILL_PATTERN`].
    pub src_ok: bool,
    /// Whether the destination holds it.
    pub dst_ok: bool,
}

impl CopyCheck {
    /// Whether `STATUS` shows the batch ran to its end: DONE, no ERROR, and as many
    /// descriptors completed as there are results.
    pub fn status_ok(&self) -> bool {
        let s = self.status;
        s.done() && !s.error() && usize::from(s.count()) == self.results.len()
    }

    /// Why the batch failed, named `what`, or `None` if source and destination hold the
    /// pattern, `STATUS` is [`CopyCheck::status_ok`] and every RESULT is [`RESULT_OK`]. (The
    /// interrupt is reported, not required.)
    pub fn failure(&self, what: &str) -> Option<String> {
        let ok = self.src_ok
            && self.dst_ok
            && self.status_ok()
            && self.results.iter().all(|&r| r == RESULT_OK);
        (!ok).then(|| {
            format!(
                "{what}: status {:#x}, results {}, src_ok {}, dst_ok {}",
                self.status.0,
                results_list(&self.results),
                crate::report::yes(self.src_ok),
                crate::report::yes(self.dst_ok)
            )
        })
    }
}

/// The page size `dma-engine --identity`'s page limit ([`IDENTITY_MAX_PAGES`]) is computed
/// for: the x86 guest's 4 KiB.
pub const IDENTITY_PAGE: u64 = 4096;
/// Descriptors per buffer page in `dma-engine --identity`'s copy batch: a FILL, a COPY and a
/// COMPARE.
pub const IDENTITY_DESCS_PER_PAGE: u64 = 3;

/// The x86 MSI window, `0xfee00000..=0xfeefffff`: a DMA write there is an interrupt message,
/// and the IOMMU reserves it (virtio-iommu reports it as a reserved region, and VFIO refuses
/// to map IOVAs in it). No page can be mapped at an IOVA equal to a guest-physical address in
/// it.
pub const MSI_WINDOW: std::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Whether the page of `page_size` bytes at `addr` overlaps [`MSI_WINDOW`].
pub fn overlaps_msi_window(addr: u64, page_size: u64) -> bool {
    addr < MSI_WINDOW.end && addr.saturating_add(page_size) > MSI_WINDOW.start
}

/// The most descriptors one doorbell can run from a descriptor page of `page_size` bytes:
/// [`MAX_BATCH`], or fewer when the page holds fewer. The engine fetches descriptor `i` at
/// `DESC_BASE + 32 * i`; with identity IOVAs only the descriptor page's own frame is mapped at
/// its guest-physical address (the next page of a buffer is generally not the next frame, and
/// the next frame is generally not mapped), so a batch must lie in that one page.
pub const fn descs_per_page(page_size: u64) -> u64 {
    let fit = page_size / DESC_SIZE as u64;
    if fit < MAX_BATCH as u64 {
        fit
    } else {
        MAX_BATCH as u64
    }
}

/// The most `dma-engine --identity --pages`: the copy batch takes
/// [`IDENTITY_DESCS_PER_PAGE`] descriptors per page, and all of them must fit one descriptor
/// page of [`IDENTITY_PAGE`] bytes (128 descriptors, fewer than the engine's 256): 42.
pub const IDENTITY_MAX_PAGES: u64 = descs_per_page(IDENTITY_PAGE) / IDENTITY_DESCS_PER_PAGE;

/// The guest-physical frames of `dma-engine --identity`'s descriptor page and buffers, which
/// are also their IOVAs: every page is mapped through VFIO at an IOVA equal to its own
/// guest-physical address. A buffer of several pages is generally not physically contiguous,
/// so its IOVAs are not either, and every descriptor moves one page: to, from or between the
/// frames of the same page index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFrames {
    /// The descriptor page's frame: what `DESC_BASE` gets.
    pub desc: u64,
    /// The source buffer's frames, page by page.
    pub src: Vec<u64>,
    /// The destination buffer's frames, page by page.
    pub dst: Vec<u64>,
    /// The page size, which is also every descriptor's `LEN`.
    pub page_size: u64,
}

impl PageFrames {
    /// Checks the frames: `page_size` a power of two no longer than one descriptor moves,
    /// source and destination of the same nonzero number of pages, the copy batch's
    /// [`IDENTITY_DESCS_PER_PAGE`] descriptors per page within [`descs_per_page`], and every
    /// frame aligned to the page, outside [`MSI_WINDOW`] and distinct from the others (each is
    /// one identity mapping).
    pub fn new(desc: u64, src: Vec<u64>, dst: Vec<u64>, page_size: u64) -> crate::Result<Self> {
        let bad = |m: String| crate::AgentError::Engine(m);
        if !page_size.is_power_of_two() || page_size > u64::from(MAX_LEN) {
            return Err(bad(format!("page size {page_size:#x} unusable")));
        }
        if src.is_empty() || src.len() != dst.len() {
            return Err(bad(format!(
                "{} source and {} destination frames; want the same nonzero number",
                src.len(),
                dst.len()
            )));
        }
        let most = descs_per_page(page_size) / IDENTITY_DESCS_PER_PAGE;
        if src.len() as u64 > most {
            return Err(bad(format!(
                "{} pages need {} descriptors; one {page_size:#x}-byte descriptor page runs \
                 {} ({most} pages)",
                src.len(),
                src.len() as u64 * IDENTITY_DESCS_PER_PAGE,
                descs_per_page(page_size)
            )));
        }
        let f = PageFrames {
            desc,
            src,
            dst,
            page_size,
        };
        let pages = f.pages_by_name();
        if let Some((name, a)) = pages.iter().find(|(_, a)| !a.is_multiple_of(page_size)) {
            return Err(bad(format!(
                "the {name}'s frame {a:#x} is not aligned to the {page_size:#x}-byte page"
            )));
        }
        if let Some((name, a)) = pages
            .iter()
            .find(|(_, a)| overlaps_msi_window(*a, page_size))
        {
            return Err(bad(format!(
                "the {name} lies at guest-physical {a:#x}, in the x86 MSI window \
                 {:#x}..={:#x}, which the IOMMU reserves: it cannot be mapped at an identity \
                 IOVA",
                MSI_WINDOW.start,
                MSI_WINDOW.end - 1
            )));
        }
        let mut sorted: Vec<&(String, u64)> = pages.iter().collect();
        sorted.sort_by_key(|(_, a)| *a);
        if let Some(w) = sorted.windows(2).find(|w| w[0].1 == w[1].1) {
            return Err(bad(format!(
                "the {} and the {} share the frame {:#x}",
                w[0].0, w[1].0, w[0].1
            )));
        }
        Ok(f)
    }

    /// Every page with its frame, in the order they are mapped: the descriptor page, the
    /// source pages, the destination pages; named for messages (`descriptor page`,
    /// `source page 0`, ..., `destination page 0`, ...).
    pub fn pages_by_name(&self) -> Vec<(String, u64)> {
        std::iter::once(("descriptor page".to_string(), self.desc))
            .chain(
                self.src
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| (format!("source page {i}"), a)),
            )
            .chain(
                self.dst
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| (format!("destination page {i}"), a)),
            )
            .collect()
    }

    /// The pages whose frame differs in `now` (the same buffers read again), with the frame
    /// before and after, compared page by page (a page only one of them has is not listed).
    pub fn moved(&self, now: &PageFrames) -> Vec<(String, u64, u64)> {
        let (a, b) = (self.pages_by_name(), now.pages_by_name());
        a.into_iter()
            .zip(b)
            .filter(|((_, f), (_, g))| f != g)
            .map(|((n, f), (_, g))| (n, f, g))
            .collect()
    }

    /// Pages in each buffer.
    pub fn pages(&self) -> usize {
        self.src.len()
    }

    fn len(&self) -> u32 {
        // At most MAX_LEN, by `new`.
        self.page_size as u32
    }

    /// The copy batch: FILL every source page with `pattern`, then COPY every source page to
    /// its destination page, then COMPARE every pair (the IOVA mode's three descriptors,
    /// each split page by page): `3 * pages` descriptors.
    pub fn copy_batch(&self, pattern: u64) -> Vec<Descriptor> {
        let len = self.len();
        let fills = self.src.iter().map(|&s| Descriptor::fill(s, pattern, len));
        let pairs = || self.src.iter().zip(&self.dst);
        let copies = pairs().map(|(&s, &d)| Descriptor::copy(s, d, len));
        let compares = pairs().map(|(&s, &d)| Descriptor::compare(s, d, len));
        fills.chain(copies).chain(compares).collect()
    }

    /// COMPARE every source page with its destination page: `pages` descriptors.
    pub fn compare_batch(&self) -> Vec<Descriptor> {
        let len = self.len();
        self.src
            .iter()
            .zip(&self.dst)
            .map(|(&s, &d)| Descriptor::compare(s, d, len))
            .collect()
    }

    /// The benchmark's one-page COPY: source page 0 to destination page 0.
    pub fn bench_copy(&self) -> Descriptor {
        Descriptor::copy(self.src[0], self.dst[0], self.len())
    }
}

#[cfg(target_os = "linux")]
pub use engine::Engine;

#[cfg(target_os = "linux")]
mod engine {
    use super::*;
    use crate::vfio::{Device, Region, VFIO_PCI_BAR0_REGION_INDEX};
    use crate::{AgentError, Result};
    use std::time::{Duration, Instant};

    /// The engine's register file, reached through BAR0 of its VFIO device.
    #[derive(Debug)]
    pub struct Engine<'a> {
        dev: &'a Device,
        bar: Region,
    }

    impl<'a> Engine<'a> {
        /// Region 0 of `dev`, checked to be a readable and writable region of at least
        /// [`BAR0_SIZE`] bytes.
        pub fn new(dev: &'a Device) -> Result<Self> {
            let bar = dev.region(VFIO_PCI_BAR0_REGION_INDEX)?;
            if bar.size < BAR0_SIZE || !bar.read_write() {
                return Err(AgentError::Engine(format!(
                    "region 0 of {} is {:#x} bytes with flags {:#x}; want >= {BAR0_SIZE:#x}, \
                     read and write",
                    dev.name, bar.size, bar.flags
                )));
            }
            Ok(Engine { dev, bar })
        }

        /// BAR0's region.
        pub fn region(&self) -> &Region {
            &self.bar
        }

        /// A 32-bit register read.
        pub fn read(&self, reg: u64) -> Result<u32> {
            self.dev.read32(&self.bar, reg)
        }

        /// A 32-bit register write.
        pub fn write(&self, reg: u64, v: u32) -> Result<()> {
            self.dev.write32(&self.bar, reg, v)
        }

        /// A 64-bit register read.
        pub fn read64(&self, reg: u64) -> Result<u64> {
            self.dev.read64(&self.bar, reg)
        }

        /// A 64-bit register write.
        pub fn write64(&self, reg: u64, v: u64) -> Result<()> {
            self.dev.write64(&self.bar, reg, v)
        }

        /// `STATUS`.
        pub fn status(&self) -> Result<Status> {
            Ok(Status(self.read(REG_STATUS)?))
        }

        /// Rings the doorbell for `n` descriptors at `desc_base`, then reads `STATUS` until
        /// the batch ended (DONE or ERROR; the doorbell is synchronous, so the first read
        /// normally shows it, and it orders the read after the batch even if the write was
        /// posted) or `timeout` passed. Returns the last `STATUS` read.
        pub fn run(&self, desc_base: u64, n: u32, timeout: Duration) -> Result<Status> {
            self.write64(REG_DESC_BASE, desc_base)?;
            self.ring(n, timeout)
        }

        /// Like [`Engine::run`] with `DESC_BASE` as it is.
        pub fn ring(&self, n: u32, timeout: Duration) -> Result<Status> {
            self.write(REG_DOORBELL, n)?;
            self.wait_ended(timeout)
        }

        /// Reads `STATUS` until DONE or ERROR is set or `timeout` passed; returns the last
        /// value read.
        pub fn wait_ended(&self, timeout: Duration) -> Result<Status> {
            let deadline = Instant::now() + timeout;
            loop {
                let s = self.status()?;
                if s.ended() || Instant::now() >= deadline {
                    return Ok(s);
                }
                std::thread::yield_now();
            }
        }

        /// Clears `STATUS` (writing ones to DONE, ERROR and MISCOMPARE) and `INT_STATUS`.
        pub fn clear(&self) -> Result<()> {
            self.write(REG_STATUS, STATUS_W1C)?;
            self.write(REG_INT_STATUS, INT_PENDING)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_descriptor_bytes() {
        let d = Descriptor::copy(0x0010_1000, 0x0000_0001_0010_5000, 0x4000);
        #[rustfmt::skip]
        let want: [u8; 32] = [
            0x01, 0x00, 0x00, 0x00,                         // CTRL: COPY
            0x00, 0x00, 0x00, 0x00,                         // PASID
            0x00, 0x10, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, // SRC
            0x00, 0x50, 0x10, 0x00, 0x01, 0x00, 0x00, 0x00, // DST
            0x00, 0x40, 0x00, 0x00,                         // LEN
            0x00, 0x00, 0x00, 0x00,                         // RESULT
        ];
        assert_eq!(d.to_bytes(), want);
        assert_eq!(Descriptor::from_bytes(&want), d);
    }

    #[test]
    fn fill_descriptor_carries_the_pattern_in_src() {
        let d = Descriptor::fill(0x20_0000, FILL_PATTERN, 4096);
        #[rustfmt::skip]
        let want: [u8; 32] = [
            0x02, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
            0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01, // the pattern
            0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x10, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(d.to_bytes(), want);
    }

    #[test]
    fn compare_descriptor_and_flags() {
        let mut d = Descriptor::compare(0xaabb_ccdd_0000_1000, 0x2000, 1);
        d.ctrl |= CTRL_PASID_VALID | CTRL_PRIVILEGED;
        d.pasid = 0x000f_ffff;
        d.result = 0x83;
        #[rustfmt::skip]
        let want: [u8; 32] = [
            0x03, 0x03, 0x00, 0x00,                         // COMPARE | bit 8 | bit 9
            0xff, 0xff, 0x0f, 0x00,
            0x00, 0x10, 0x00, 0x00, 0xdd, 0xcc, 0xbb, 0xaa,
            0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x00, 0x00,
            0x83, 0x00, 0x00, 0x00,
        ];
        assert_eq!(d.to_bytes(), want);
        assert_eq!(Descriptor::from_bytes(&want), d);
    }

    #[test]
    fn result_words_by_slot() {
        let mut page = vec![0u8; 4096];
        page[0x1c] = 1;
        page[0x20 + 0x1c] = 2;
        page[0x40 + 0x1c..0x40 + 0x20].copy_from_slice(&[0x83, 0, 0, 0x10]);
        assert_eq!(result_at(&page, 0), Some(1));
        assert_eq!(result_at(&page, 1), Some(2));
        assert_eq!(result_at(&page, 2), Some(0x1000_0083));
        assert_eq!(result_at(&page, 127), Some(0));
        assert_eq!(result_at(&page, 128), None);
        assert_eq!(result_at(&page, usize::MAX), None);
    }

    #[test]
    fn register_offsets_match_the_spec() {
        let regs = [
            (REG_ID, 0x000),
            (REG_CAP, 0x004),
            (REG_CONTROL, 0x008),
            (REG_STATUS, 0x00c),
            (REG_INT_STATUS, 0x010),
            (REG_ERROR_ADDR, 0x018),
            (REG_ERROR_INFO, 0x020),
            (REG_DESC_BASE, 0x028),
            (REG_DOORBELL, 0x030),
            (REG_DESC_PASID, 0x034),
            (REG_TOTAL_DESC, 0x038),
            (REG_TOTAL_BYTES, 0x040),
            (REG_TOTAL_ERRORS, 0x048),
        ];
        for (got, want) in regs {
            assert_eq!(got, want);
        }
        assert_eq!(ENGINE_ID.to_le_bytes(), *b"EAMD");
    }

    #[test]
    fn status_fields() {
        // COUNT 3, ERROR_CODE 0, MISCOMPARE | DONE
        let s = Status(0x0003_0005);
        assert!(s.done() && s.miscompare() && !s.error() && s.ended());
        assert_eq!((s.count(), s.error_code()), (3, 0));
        // COUNT 0, DST_FAULT, ERROR
        let s = Status(0x0000_0302);
        assert!(s.error() && !s.done() && s.ended());
        assert_eq!(s.error_code(), code::DST_FAULT);
        assert_eq!(code::name(s.error_code()), "DST_FAULT");
        assert!(!Status(0).ended());
        assert_eq!(Status(0xffff_0000).count(), 0xffff);
    }

    #[test]
    fn cap_fields() {
        // 256 descriptors, 16 MiB, PASID, version 1
        let c = Cap(0x0818_0101);
        assert_eq!(
            (c.version(), c.pasid(), c.max_len_log2(), c.max_batch_log2()),
            (1, true, 24, 8)
        );
        assert_eq!(1u32 << c.max_len_log2(), MAX_LEN);
        assert_eq!(1u32 << c.max_batch_log2(), MAX_BATCH);
        assert!(!Cap(0x0818_0001).pasid());
    }

    #[test]
    fn pattern_check() {
        let mut b: Vec<u8> = [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]
            .iter()
            .copied()
            .cycle()
            .take(20)
            .collect();
        assert!(holds_pattern(&b, FILL_PATTERN));
        b[19] ^= 1;
        assert!(!holds_pattern(&b, FILL_PATTERN));
        assert!(
            !holds_pattern(&[0x01], FILL_PATTERN),
            "starts at the low byte"
        );
        assert_eq!(hex_bytes(&[0xef, 0x01, 0x00]), "ef0100");
    }

    #[test]
    fn results_are_listed_decimal_or_hex() {
        assert_eq!(results_list(&[1, 1, 1]), "1,1,1");
        assert_eq!(results_list(&[1, 0x83, 0]), "1,0x83,0");
        assert_eq!(results_list(&[]), "");
    }

    fn frames_3() -> PageFrames {
        // Three pages whose frames are neither contiguous nor in order.
        PageFrames::new(
            0x7_7000,
            vec![0x12_3000, 0x4_5000, 0x12_4000],
            vec![0x9_9000, 0x1_0000_0000, 0x2000],
            4096,
        )
        .unwrap()
    }

    #[test]
    fn identity_page_limit() {
        assert_eq!(descs_per_page(4096), 128);
        assert_eq!(descs_per_page(8192), 256);
        assert_eq!(descs_per_page(64 << 10), 256, "the engine's limit caps it");
        assert_eq!(IDENTITY_MAX_PAGES, 42);
        // Source frames from 1, destination frames from 1000 pages up: all distinct.
        let f = |n: u64, base: u64| (0..n).map(|i| (base + i) << 12).collect::<Vec<_>>();
        assert!(PageFrames::new(0, f(42, 1), f(42, 1000), 4096).is_ok());
        let Err(crate::AgentError::Engine(m)) = PageFrames::new(0, f(43, 1), f(43, 1000), 4096)
        else {
            panic!("43 pages accepted")
        };
        assert!(m.contains("129 descriptors"), "{m}");
        // 16 KiB pages hold 256 descriptors: 85 pages.
        let g = |n: u64, base: u64| (0..n).map(|i| (base + i) << 14).collect::<Vec<_>>();
        assert!(PageFrames::new(0, g(85, 1), g(85, 1000), 16384).is_ok());
        assert!(PageFrames::new(0, g(86, 1), g(86, 1000), 16384).is_err());
    }

    #[test]
    fn identity_frames_are_checked() {
        let ok = |d: u64, s: &[u64], t: &[u64], p: u64| {
            PageFrames::new(d, s.to_vec(), t.to_vec(), p).is_ok()
        };
        assert!(ok(0x1000, &[0x2000], &[0x3000], 4096));
        assert!(!ok(0x1000, &[], &[], 4096), "no pages");
        assert!(
            !ok(0x1000, &[0x2000], &[0x3000, 0x4000], 4096),
            "lengths differ"
        );
        assert!(!ok(0x1800, &[0x2000], &[0x3000], 4096), "desc unaligned");
        assert!(!ok(0x1000, &[0x2010], &[0x3000], 4096), "src unaligned");
        assert!(!ok(0x1000, &[0x2000], &[0x3008], 4096), "dst unaligned");
        assert!(!ok(0, &[0], &[0], 3000), "not a power of two");
        assert!(
            !ok(0, &[0], &[0], 32 << 20),
            "longer than a descriptor moves"
        );
        // Each frame is one identity mapping: no two pages may share one.
        assert!(!ok(0x1000, &[0x1000], &[0x3000], 4096), "desc = src");
        assert!(
            !ok(0x1000, &[0x2000, 0x5000], &[0x3000, 0x2000], 4096),
            "src = dst"
        );
        assert!(!ok(0x1000, &[0x2000, 0x2000], &[0x3000, 0x4000], 4096));
        // Frames just outside the MSI window are fine; any page inside it is not.
        assert!(ok(0xfedf_f000, &[0xfef0_0000], &[0x1_0000_0000], 4096));
        for f in [0xfee0_0000, 0xfee0_1000, 0xfeef_f000] {
            assert!(!ok(f, &[0x2000], &[0x3000], 4096), "desc {f:#x}");
            assert!(!ok(0x1000, &[f], &[0x3000], 4096), "src {f:#x}");
            assert!(
                !ok(0x1000, &[0x2000, 0x4000], &[0x3000, f], 4096),
                "dst {f:#x}"
            );
        }
        // A larger page starting below the window reaches into it, or ends at its start.
        let (s16, d16) = (&[0x1_0000_0000], &[0x2_0000_0000]);
        assert!(!ok(0xfe00_0000, s16, d16, 16 << 20));
        assert!(ok(0xfedf_0000, &[0x1_0000], &[0x2_0000], 0x1_0000));
        let Err(crate::AgentError::Engine(m)) = PageFrames::new(
            0x1000,
            vec![0x2000, 0xfee0_0000],
            vec![0x3000, 0x4000],
            4096,
        ) else {
            panic!("accepted")
        };
        assert!(
            m.contains("source page 1") && m.contains("0xfee00000") && m.contains("MSI"),
            "{m}"
        );
        let Err(crate::AgentError::Engine(m)) =
            PageFrames::new(0x1000, vec![0x2000], vec![0x1000], 4096)
        else {
            panic!("accepted")
        };
        assert!(
            m.contains("descriptor page") && m.contains("destination page 0"),
            "{m}"
        );
    }

    #[test]
    fn msi_window_overlap() {
        assert_eq!(MSI_WINDOW, 0xfee0_0000..0xfef0_0000);
        assert!(!overlaps_msi_window(0xfedf_f000, 4096));
        assert!(overlaps_msi_window(0xfedf_f001, 4096));
        assert!(overlaps_msi_window(0xfee0_0000, 4096));
        assert!(overlaps_msi_window(0xfeef_f000, 4096));
        assert!(!overlaps_msi_window(0xfef0_0000, 4096));
        assert!(!overlaps_msi_window(0, 4096));
        assert!(!overlaps_msi_window(u64::MAX - 4095, 4096));
        assert!(overlaps_msi_window(0, 1 << 40), "a page spanning it");
    }

    #[test]
    fn identity_pages_are_named_in_map_order_and_moves_found() {
        let f = frames_3();
        let names: Vec<(String, u64)> = [
            ("descriptor page", 0x7_7000),
            ("source page 0", 0x12_3000),
            ("source page 1", 0x4_5000),
            ("source page 2", 0x12_4000),
            ("destination page 0", 0x9_9000),
            ("destination page 1", 0x1_0000_0000),
            ("destination page 2", 0x2000),
        ]
        .iter()
        .map(|&(n, a)| (n.to_string(), a))
        .collect();
        assert_eq!(f.pages_by_name(), names);
        assert!(f.moved(&f.clone()).is_empty());
        let mut g = f.clone();
        g.src[1] = 0x55_5000;
        g.desc = 0x66_6000;
        assert_eq!(
            f.moved(&g),
            vec![
                ("descriptor page".to_string(), 0x7_7000, 0x66_6000),
                ("source page 1".to_string(), 0x4_5000, 0x55_5000),
            ]
        );
    }

    #[test]
    fn identity_copy_batch_goes_page_by_page() {
        let f = frames_3();
        assert_eq!(f.pages(), 3);
        let p = FILL_PATTERN;
        let want = vec![
            Descriptor {
                ctrl: 2,
                pasid: 0,
                src: p,
                dst: 0x12_3000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 2,
                pasid: 0,
                src: p,
                dst: 0x4_5000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 2,
                pasid: 0,
                src: p,
                dst: 0x12_4000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 1,
                pasid: 0,
                src: 0x12_3000,
                dst: 0x9_9000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 1,
                pasid: 0,
                src: 0x4_5000,
                dst: 0x1_0000_0000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 1,
                pasid: 0,
                src: 0x12_4000,
                dst: 0x2000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 3,
                pasid: 0,
                src: 0x12_3000,
                dst: 0x9_9000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 3,
                pasid: 0,
                src: 0x4_5000,
                dst: 0x1_0000_0000,
                len: 4096,
                result: 0,
            },
            Descriptor {
                ctrl: 3,
                pasid: 0,
                src: 0x12_4000,
                dst: 0x2000,
                len: 4096,
                result: 0,
            },
        ];
        assert_eq!(f.copy_batch(FILL_PATTERN), want);
        assert_eq!(f.compare_batch(), want[6..].to_vec());
        assert_eq!(
            f.bench_copy(),
            Descriptor {
                ctrl: 1,
                pasid: 0,
                src: 0x12_3000,
                dst: 0x9_9000,
                len: 4096,
                result: 0
            }
        );
        // The bytes of one of them, as the engine fetches them.
        #[rustfmt::skip]
        let copy_1: [u8; 32] = [
            0x01, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x50, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x00, 0x10, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(f.copy_batch(FILL_PATTERN)[4].to_bytes(), copy_1);
    }

    #[test]
    fn identity_largest_batch_fits_the_descriptor_page() {
        let n = IDENTITY_MAX_PAGES;
        let src: Vec<u64> = (0..n).map(|i| (2 * i + 10) << 12).collect();
        let dst: Vec<u64> = (0..n).map(|i| (2 * i + 11) << 12).collect();
        let f = PageFrames::new(0x1000, src.clone(), dst.clone(), 4096).unwrap();
        let b = f.copy_batch(0);
        assert_eq!(b.len() as u64, 3 * n);
        assert!(b.len() * DESC_SIZE <= 4096 && b.len() <= MAX_BATCH as usize);
        let n = n as usize;
        for i in 0..n {
            assert_eq!((b[i].ctrl, b[i].dst), (Opcode::Fill as u32, src[i]));
            assert_eq!(
                (b[n + i].ctrl, b[n + i].src, b[n + i].dst),
                (Opcode::Copy as u32, src[i], dst[i])
            );
            assert_eq!(
                (b[2 * n + i].ctrl, b[2 * n + i].src, b[2 * n + i].dst),
                (Opcode::Compare as u32, src[i], dst[i])
            );
        }
        assert!(
            b.iter()
                .all(|d| d.len == 4096 && d.pasid == 0 && d.result == 0)
        );
    }

    #[test]
    fn copy_check_wants_everything_right_but_the_interrupt() {
        let good = CopyCheck {
            // COUNT 3, DONE
            status: Status(0x0003_0001),
            results: vec![RESULT_OK; 3],
            irq: false,
            src_ok: true,
            dst_ok: true,
        };
        assert!(good.status_ok());
        assert_eq!(good.failure("copy batch"), None);
        let bad = |f: fn(&mut CopyCheck)| {
            let mut c = good.clone();
            f(&mut c);
            c.failure("copy batch")
        };
        assert_eq!(
            bad(|c| c.dst_ok = false).as_deref(),
            Some("copy batch: status 0x30001, results 1,1,1, src_ok yes, dst_ok no")
        );
        assert!(bad(|c| c.src_ok = false).is_some());
        assert!(bad(|c| c.results[2] = RESULT_MISCOMPARE).is_some());
        assert!(bad(|c| c.results.push(RESULT_OK)).is_some(), "count 3 of 4");
        // COUNT 2, ERROR with SRC_FAULT
        let m = bad(|c| c.status = Status(0x0002_0202)).unwrap();
        assert!(m.contains("status 0x20202"), "{m}");
        assert!(
            bad(|c| c.status = Status(0x0003_0000)).is_some(),
            "not DONE"
        );
    }

    #[test]
    fn layout_places_buffers_back_to_back() {
        let l = Layout::new(0x10_0000, 4, 4096).unwrap();
        assert_eq!(
            l,
            Layout {
                desc: 0x10_0000,
                src: 0x10_1000,
                dst: 0x10_5000,
                len: 0x4000,
                unmapped: 0x1010_0000,
            }
        );
        assert_eq!(l.span(), 0x10_0000..0x10_9000);
        assert_eq!(l.at(0x10_0000), Some(l));
        assert_eq!(l.at(0x4010_0000), Layout::new(0x4010_0000, 4, 4096));
        assert_eq!(l.at(0), Layout::new(0, 4, 4096));
        assert_eq!(l.at(u64::MAX - UNMAPPED_OFFSET + 1), None);
        assert!(Layout::new(0x10_0000, 0, 4096).is_none());
        assert!(Layout::new(u64::MAX - 0x1000, 1, 4096).is_none());
        // The unmapped IOVA must itself be representable: u64::MAX is, one more is not.
        assert!(Layout::new(u64::MAX - UNMAPPED_OFFSET, 1, 4096).is_some());
        assert!(Layout::new(u64::MAX - UNMAPPED_OFFSET + 1, 1, 4096).is_none());
        // 16 MiB buffers are as long as one descriptor moves; one page more is not.
        assert!(Layout::new(0, 4096, 4096).is_some());
        assert!(Layout::new(0, 4097, 4096).is_none());
    }
}
