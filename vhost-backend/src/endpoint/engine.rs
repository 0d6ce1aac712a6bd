//! The DMA engine: a PCI endpoint, in the spirit of QEMU's `edu` but descriptor-based, whose
//! every DMA (descriptor fetches, data, result write-backs) is translated by the IOMMU as the
//! function's requester id, and reaches guest RAM only through the DMA regions the VMM gave it.
//!
//! # The function
//!
//! Vendor 0x1234, device 0x1dae ([`VENDOR_ID`], [`DEVICE_ID`]), class 0x088000; BAR0 is 4 KiB
//! of registers; MSI (one vector) or INTA; a PASID capability (20 bits). The engine DMAs only
//! while the Command register's Bus Master Enable is set, and tags a request with a PASID only
//! while the PASID capability is enabled.
//!
//! # Registers (BAR0, little-endian; a 64-bit register is two 32-bit halves, low first)
//!
//! | offset | name | access | meaning |
//! |---|---|---|---|
//! | 0x000 | `ID` | RO | [`ENGINE_ID`] |
//! | 0x004 | `CAP` | RO | bits 7:0 version (1); bit 8 PASID on descriptors; bits 23:16 log2 of the largest `LEN` (24); bits 31:24 log2 of the most descriptors per doorbell (8) |
//! | 0x008 | `CONTROL` | RW | bit 0 `IE`: interrupt when a batch ends; writing bit 31 resets the engine (registers; the totals stay) |
//! | 0x00c | `STATUS` | R/W1C | bit 0 `DONE`, bit 1 `ERROR`, bit 2 `MISCOMPARE`; bits 15:8 the error code; bits 31:16 descriptors the last batch completed. Writing 1 clears bits 0-2 (and the code with `ERROR`) |
//! | 0x010 | `INT_STATUS` | R/W1C | bit 0: completion interrupt pending (INTx is asserted while pending and `IE`) |
//! | 0x018 | `ERROR_ADDR` | RO 64 | the IOVA of the access that failed |
//! | 0x020 | `ERROR_INFO` | RO | bits 15:0 the IOMMU's fault code; bit 16 the access was a write; bit 17 it carried a PASID |
//! | 0x028 | `DESC_BASE` | RW 64 | IOVA of the first descriptor (bits 4:0 read 0) |
//! | 0x030 | `DOORBELL` | WO | writing n (1..=256) runs n descriptors from `DESC_BASE`, in order; the write completes when the batch has |
//! | 0x034 | `DESC_PASID` | RW | bit 31 valid, bits 19:0 the PASID of descriptor fetches and write-backs |
//! | 0x038 | `TOTAL_DESC` | RO | descriptors completed since the function was created |
//! | 0x040 | `TOTAL_BYTES` | RO 64 | bytes written by them |
//! | 0x048 | `TOTAL_ERRORS` | RO | batches that stopped on an error |
//!
//! # Descriptors (32 bytes, little-endian, read by DMA at `DESC_BASE + 32 * i`)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 4 | `CTRL`: bits 3:0 opcode ([`OP_COPY`] src to dst, [`OP_FILL`] dst with the 8-byte pattern in `SRC`, [`OP_COMPARE`] src with dst); bit 8 the data accesses carry `PASID`; bit 9 privileged (needs bit 8) |
//! | 0x04 | 4 | `PASID` (bits 19:0) |
//! | 0x08 | 8 | `SRC`: source IOVA (`FILL`: the pattern, from its first byte) |
//! | 0x10 | 8 | `DST`: destination IOVA (`COMPARE`: the second buffer) |
//! | 0x18 | 4 | `LEN`: 1 to 16 MiB |
//! | 0x1c | 4 | `RESULT`, written back: 1 OK, 2 miscompare, `0x80 \| code` on an error |
//!
//! A batch stops at the first descriptor that fails (its `RESULT` gets the error when the
//! write-back can be done; later descriptors are untouched). Error codes: 1 descriptor fetch
//! faulted, 2 a source read faulted, 3 a destination write (or the second buffer's read)
//! faulted, 4 the IOMMU's output is outside every DMA region, 5 bad descriptor, 6 bad doorbell
//! (or `DESC_PASID`), 7 Bus Master Enable is clear, 8 the `RESULT` write-back faulted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use iommu_emulator::request::Fault;
use iommu_emulator::{AccessKind, DmaRequest};

use super::DmaTranslator;
use crate::vfio::pci::FunctionId;
use crate::vfio::regions::DmaRegions;

/// PCI vendor ID of the function (QEMU's, as `edu` uses).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of the function.
pub const DEVICE_ID: u16 = 0x1dae;
/// The function's identity.
pub const FUNCTION: FunctionId = FunctionId {
    vendor: VENDOR_ID,
    device: DEVICE_ID,
    revision: 1,
    class: 0x08_80_00,
};
/// Size of BAR0.
pub const BAR0_SIZE: u32 = 4096;
/// The PASID width the function supports.
pub const PASID_WIDTH: u8 = 20;

/// What `ID` reads.
pub const ENGINE_ID: u32 = 0x444d_4145;
/// Register offsets.
pub mod reg {
    /// `ID`.
    pub const ID: u64 = 0x000;
    /// `CAP`.
    pub const CAP: u64 = 0x004;
    /// `CONTROL`.
    pub const CONTROL: u64 = 0x008;
    /// `STATUS`.
    pub const STATUS: u64 = 0x00c;
    /// `INT_STATUS`.
    pub const INT_STATUS: u64 = 0x010;
    /// `ERROR_ADDR` (64 bits).
    pub const ERROR_ADDR: u64 = 0x018;
    /// The upper half of `ERROR_ADDR`.
    pub const ERROR_ADDR_HI: u64 = ERROR_ADDR + 4;
    /// `ERROR_INFO`.
    pub const ERROR_INFO: u64 = 0x020;
    /// `DESC_BASE` (64 bits).
    pub const DESC_BASE: u64 = 0x028;
    /// The upper half of `DESC_BASE`.
    pub const DESC_BASE_HI: u64 = DESC_BASE + 4;
    /// `DOORBELL`.
    pub const DOORBELL: u64 = 0x030;
    /// `DESC_PASID`.
    pub const DESC_PASID: u64 = 0x034;
    /// `TOTAL_DESC`.
    pub const TOTAL_DESC: u64 = 0x038;
    /// `TOTAL_BYTES` (64 bits).
    pub const TOTAL_BYTES: u64 = 0x040;
    /// The upper half of `TOTAL_BYTES`.
    pub const TOTAL_BYTES_HI: u64 = TOTAL_BYTES + 4;
    /// `TOTAL_ERRORS`.
    pub const TOTAL_ERRORS: u64 = 0x048;
}

/// `CONTROL.IE`.
pub const CONTROL_IE: u32 = 1 << 0;
/// `CONTROL.RESET` (write only).
pub const CONTROL_RESET: u32 = 1 << 31;
/// `STATUS.DONE`.
pub const STATUS_DONE: u32 = 1 << 0;
/// `STATUS.ERROR`.
pub const STATUS_ERROR: u32 = 1 << 1;
/// `STATUS.MISCOMPARE`.
pub const STATUS_MISCOMPARE: u32 = 1 << 2;

/// `CTRL` opcode: copy `LEN` bytes from `SRC` to `DST`.
pub const OP_COPY: u32 = 1;
/// `CTRL` opcode: fill `LEN` bytes at `DST` with the pattern in `SRC`.
pub const OP_FILL: u32 = 2;
/// `CTRL` opcode: compare `LEN` bytes at `SRC` and `DST`.
pub const OP_COMPARE: u32 = 3;
/// `CTRL`: the data accesses carry the descriptor's PASID.
pub const CTRL_PASID: u32 = 1 << 8;
/// `CTRL`: privileged (supervisor) requests.
pub const CTRL_PRIV: u32 = 1 << 9;
/// `DESC_PASID`: valid.
pub const DESC_PASID_VALID: u32 = 1 << 31;
/// Size of a descriptor.
pub const DESC_SIZE: u64 = 32;
/// The largest `LEN`.
pub const MAX_LEN: u32 = 1 << 24;
/// The most descriptors one doorbell runs.
pub const MAX_BATCH: u32 = 256;
/// `RESULT` of a descriptor that completed.
pub const RESULT_OK: u32 = 1;
/// `RESULT` of a `COMPARE` that found a difference.
pub const RESULT_MISCOMPARE: u32 = 2;
/// `RESULT` of a descriptor that failed: this bit or'ed with the error code.
pub const RESULT_ERROR: u32 = 0x80;

/// Why a batch stopped (`STATUS` bits 15:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// A descriptor fetch faulted in the IOMMU.
    DescFault = 1,
    /// A source read faulted.
    SrcFault = 2,
    /// A destination write (or the second buffer's read) faulted.
    DstFault = 3,
    /// The IOMMU's output address is outside every DMA region.
    NotRam = 4,
    /// Unknown opcode, `LEN` out of range, or a PASID or privilege the function may not use.
    BadDescriptor = 5,
    /// A doorbell of 0 or more than [`MAX_BATCH`], or an unusable `DESC_PASID`.
    BadDoorbell = 6,
    /// Bus Master Enable is clear.
    NoBusMaster = 7,
    /// The `RESULT` write-back faulted.
    ResultFault = 8,
}

impl ErrorCode {
    /// The name the control socket prints.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::DescFault => "desc_fault",
            ErrorCode::SrcFault => "src_fault",
            ErrorCode::DstFault => "dst_fault",
            ErrorCode::NotRam => "not_ram",
            ErrorCode::BadDescriptor => "bad_descriptor",
            ErrorCode::BadDoorbell => "bad_doorbell",
            ErrorCode::NoBusMaster => "no_bus_master",
            ErrorCode::ResultFault => "result_fault",
        }
    }
}

/// One translation the engine had the IOMMU make, for the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslationRecord {
    /// The IOVA.
    pub iova: u64,
    /// What it translated to (none: the IOMMU faulted).
    pub phys: Option<u64>,
    /// Bytes the translation covered for the access.
    pub len: u64,
    /// Log2 of the page size (0 when faulted).
    pub page_shift: u8,
    /// The access was a write.
    pub write: bool,
    /// The PASID the request carried.
    pub pasid: Option<u32>,
}

/// How many translations [`EndpointStats::recent`] keeps.
pub const RECENT: usize = 64;

/// The engine's counters, shared with the control socket.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Doorbell writes.
    pub doorbells: AtomicU64,
    /// Descriptors completed.
    pub descriptors: AtomicU64,
    /// Bytes written by completed descriptors.
    pub bytes: AtomicU64,
    /// Batches that stopped on an error.
    pub errors: AtomicU64,
    /// Translations requested from the IOMMU.
    pub translations: AtomicU64,
    /// Translations the IOMMU faulted.
    pub faults: AtomicU64,
    /// Accesses the IOMMU translated outside guest RAM.
    pub not_ram: AtomicU64,
    /// Interrupts signalled (MSI or INTx).
    pub interrupts: AtomicU64,
    /// Connections served.
    pub connections: AtomicU64,
    /// The last translations (the newest last), at most [`RECENT`].
    pub recent: Mutex<VecDeque<TranslationRecord>>,
    /// The last error: its code and address.
    pub last_error: Mutex<Option<(ErrorCode, u64)>>,
}

impl EndpointStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the engine's DMA reaches: the IOMMU and guest RAM, and what the function's
/// configuration allows.
#[derive(Clone, Copy)]
pub struct Bus<'a> {
    /// The IOMMU.
    pub iommu: &'a dyn DmaTranslator,
    /// Guest RAM.
    pub ram: &'a DmaRegions,
    /// Command: Bus Master Enable.
    pub bus_master: bool,
    /// PASID Control: PASID Enable.
    pub pasid_enabled: bool,
    /// PASID Control: Privileged Mode Enable.
    pub pasid_privileged: bool,
    /// The largest PASID.
    pub max_pasid: u32,
}

/// How one request is tagged.
#[derive(Debug, Clone, Copy, Default)]
struct Tag {
    pasid: Option<u32>,
    privileged: bool,
}

/// Why an access failed.
#[derive(Debug, Clone, Copy)]
enum AccessError {
    /// The IOMMU faulted at this IOVA.
    Fault(u64, Fault),
    /// The IOMMU translated this IOVA outside guest RAM.
    NotRam(u64),
}

/// A failed descriptor.
#[derive(Debug, Clone, Copy)]
struct Failure {
    code: ErrorCode,
    addr: u64,
    info: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Registers {
    control: u32,
    status: u32,
    int_status: u32,
    error_addr: u64,
    error_info: u32,
    desc_base: u64,
    desc_pasid: u32,
}

/// The engine's state: registers and counters. Its DMA goes through the [`Bus`] each call is
/// given.
#[derive(Debug)]
pub struct DmaEngine {
    source_id: u16,
    regs: Registers,
    stats: std::sync::Arc<EndpointStats>,
    /// Translations of the current batch, published to `stats.recent` when it ends.
    recent: VecDeque<TranslationRecord>,
    fill: Box<[u8]>,
    cmp: (Box<[u8]>, Box<[u8]>),
}

/// Bytes compared per step.
const CMP_CHUNK: usize = 4096;

impl DmaEngine {
    /// An engine whose requests carry `source_id`, counting into `stats`.
    pub fn new(source_id: u16, stats: std::sync::Arc<EndpointStats>) -> Self {
        DmaEngine {
            source_id,
            regs: Registers::default(),
            stats,
            recent: VecDeque::with_capacity(RECENT),
            fill: vec![0; CMP_CHUNK + 8].into_boxed_slice(),
            cmp: (
                vec![0; CMP_CHUNK].into_boxed_slice(),
                vec![0; CMP_CHUNK].into_boxed_slice(),
            ),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &std::sync::Arc<EndpointStats> {
        &self.stats
    }

    /// Back to the reset values (the totals stay).
    pub fn reset(&mut self) {
        self.regs = Registers::default();
    }

    /// Whether the completion interrupt is asserted (pending and enabled).
    pub fn interrupt_asserted(&self) -> bool {
        self.regs.int_status & 1 != 0 && self.regs.control & CONTROL_IE != 0
    }

    fn read32(&self, off: u64) -> u32 {
        let r = &self.regs;
        let s = &self.stats;
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            reg::ID => ENGINE_ID,
            reg::CAP => {
                1 | (1 << 8) | (MAX_LEN.trailing_zeros() << 16) | (MAX_BATCH.trailing_zeros() << 24)
            }
            reg::CONTROL => r.control,
            reg::STATUS => r.status,
            reg::INT_STATUS => r.int_status,
            reg::ERROR_ADDR => lo(r.error_addr),
            reg::ERROR_ADDR_HI => hi(r.error_addr),
            reg::ERROR_INFO => r.error_info,
            reg::DESC_BASE => lo(r.desc_base),
            reg::DESC_BASE_HI => hi(r.desc_base),
            reg::DESC_PASID => r.desc_pasid,
            reg::TOTAL_DESC => s.descriptors.load(Ordering::Relaxed) as u32,
            reg::TOTAL_BYTES => lo(s.bytes.load(Ordering::Relaxed)),
            reg::TOTAL_BYTES_HI => hi(s.bytes.load(Ordering::Relaxed)),
            reg::TOTAL_ERRORS => s.errors.load(Ordering::Relaxed) as u32,
            _ => 0,
        }
    }

    /// Reads `data.len()` bytes of the registers at `offset` (any width; bytes of no register
    /// read 0).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let a = offset.wrapping_add(i as u64);
            *b = self.read32(a & !3).to_le_bytes()[(a & 3) as usize];
        }
    }

    /// Writes the registers: 4-byte writes at 4-byte-aligned offsets, and 8-byte writes (two
    /// halves, low first); other widths are ignored, as writes to read-only registers are.
    /// Returns whether a completion interrupt must be signalled.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], bus: &Bus<'_>) -> bool {
        if !offset.is_multiple_of(4) {
            log::debug!("DMA engine: unaligned register write at {offset:#x} ignored");
            return false;
        }
        match *data {
            [a, b, c, d] => self.write32(offset, u32::from_le_bytes([a, b, c, d]), bus),
            [a, b, c, d, e, f, g, h] => {
                let lo = self.write32(offset, u32::from_le_bytes([a, b, c, d]), bus);
                let hi = self.write32(offset + 4, u32::from_le_bytes([e, f, g, h]), bus);
                lo || hi
            }
            _ => {
                log::debug!(
                    "DMA engine: {}-byte register write at {offset:#x} ignored",
                    data.len()
                );
                false
            }
        }
    }

    fn write32(&mut self, off: u64, v: u32, bus: &Bus<'_>) -> bool {
        let r = &mut self.regs;
        match off {
            reg::CONTROL => {
                if v & CONTROL_RESET != 0 {
                    self.reset();
                } else {
                    r.control = v & CONTROL_IE;
                }
            }
            reg::STATUS => {
                let clear = v & (STATUS_DONE | STATUS_ERROR | STATUS_MISCOMPARE);
                r.status &= !clear;
                if clear & STATUS_ERROR != 0 {
                    r.status &= !0xff00;
                }
            }
            reg::INT_STATUS => r.int_status &= !(v & 1),
            reg::DESC_BASE => r.desc_base = (r.desc_base & !0xffff_ffff) | u64::from(v & !0x1f),
            reg::DESC_BASE_HI => r.desc_base = (r.desc_base & 0xffff_ffff) | (u64::from(v) << 32),
            reg::DESC_PASID => r.desc_pasid = v & (DESC_PASID_VALID | 0xf_ffff),
            reg::DOORBELL => return self.doorbell(v, bus),
            _ => {}
        }
        false
    }

    /// Runs a batch of `n` descriptors; returns whether to interrupt.
    fn doorbell(&mut self, n: u32, bus: &Bus<'_>) -> bool {
        EndpointStats::add(&self.stats.doorbells, 1);
        self.recent.clear();
        let (done, outcome) = self.run_batch(n, bus);
        let r = &mut self.regs;
        r.status = (done << 16) | (r.status & STATUS_MISCOMPARE);
        match outcome {
            Ok(()) => r.status |= STATUS_DONE,
            Err(f) => {
                r.status |= STATUS_ERROR | (u32::from(f.code as u8) << 8);
                r.error_addr = f.addr;
                r.error_info = f.info;
                EndpointStats::add(&self.stats.errors, 1);
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some((f.code, f.addr));
            }
        }
        r.int_status |= 1;
        {
            let mut recent = self.stats.recent.lock().unwrap_or_else(|e| e.into_inner());
            *recent = self.recent.clone();
        }
        self.interrupt_asserted() && bus.bus_master
    }

    fn desc_tag(&self, bus: &Bus<'_>) -> Result<Tag, ()> {
        let v = self.regs.desc_pasid;
        if v & DESC_PASID_VALID == 0 {
            return Ok(Tag::default());
        }
        let pasid = v & 0xf_ffff;
        if !bus.pasid_enabled || pasid > bus.max_pasid {
            return Err(());
        }
        Ok(Tag {
            pasid: Some(pasid),
            privileged: false,
        })
    }

    fn run_batch(&mut self, n: u32, bus: &Bus<'_>) -> (u32, Result<(), Failure>) {
        self.regs.status &= !STATUS_MISCOMPARE;
        let fail = |code, addr| Failure {
            code,
            addr,
            info: 0,
        };
        let base = self.regs.desc_base;
        if !bus.bus_master {
            return (0, Err(fail(ErrorCode::NoBusMaster, base)));
        }
        let Ok(tag) = self.desc_tag(bus) else {
            return (0, Err(fail(ErrorCode::BadDoorbell, base)));
        };
        if n == 0 || n > MAX_BATCH {
            return (0, Err(fail(ErrorCode::BadDoorbell, base)));
        }
        for i in 0..n {
            let Some(at) = base.checked_add(u64::from(i) * DESC_SIZE) else {
                return (i, Err(fail(ErrorCode::DescFault, base)));
            };
            let mut raw = [0u8; DESC_SIZE as usize];
            if let Err(e) = self.read(bus, tag, at, &mut raw) {
                return (i, Err(Self::failure(e, ErrorCode::DescFault, false, tag)));
            }
            let result = self.execute(bus, &raw);
            let word = match result {
                Ok(w) => w,
                Err(f) => RESULT_ERROR | u32::from(f.code as u8),
            };
            let wb = self.write(bus, tag, at + 28, &word.to_le_bytes());
            if let Err(f) = result {
                return (i, Err(f));
            }
            if let Err(e) = wb {
                return (i, Err(Self::failure(e, ErrorCode::ResultFault, true, tag)));
            }
            EndpointStats::add(&self.stats.descriptors, 1);
        }
        (n, Ok(()))
    }

    fn failure(e: AccessError, code: ErrorCode, write: bool, tag: Tag) -> Failure {
        let flags = (u32::from(write) << 16) | (u32::from(tag.pasid.is_some()) << 17);
        match e {
            AccessError::Fault(addr, f) => Failure {
                code,
                addr,
                info: u32::from(f.code) | flags,
            },
            AccessError::NotRam(addr) => Failure {
                code: ErrorCode::NotRam,
                addr,
                info: flags,
            },
        }
    }

    /// Executes one descriptor; `Ok` is the `RESULT` word.
    fn execute(&mut self, bus: &Bus<'_>, raw: &[u8; 32]) -> Result<u32, Failure> {
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        let (ctrl, pasid, src, dst, len) =
            (u32_at(0), u32_at(4), u64_at(8), u64_at(16), u32_at(24));
        let bad = Failure {
            code: ErrorCode::BadDescriptor,
            addr: 0,
            info: 0,
        };
        if len == 0 || len > MAX_LEN {
            return Err(bad);
        }
        let tag = match (ctrl & CTRL_PASID != 0, ctrl & CTRL_PRIV != 0) {
            (false, false) => Tag::default(),
            (false, true) => return Err(bad),
            (true, privileged) => {
                let pasid = pasid & 0xf_ffff;
                if !bus.pasid_enabled
                    || pasid > bus.max_pasid
                    || (privileged && !bus.pasid_privileged)
                {
                    return Err(bad);
                }
                Tag {
                    pasid: Some(pasid),
                    privileged,
                }
            }
        };
        let len = u64::from(len);
        match ctrl & 0xf {
            OP_COPY => {
                self.copy(bus, tag, src, dst, len)?;
                EndpointStats::add(&self.stats.bytes, len);
                Ok(RESULT_OK)
            }
            OP_FILL => {
                self.fill_with(bus, tag, src.to_le_bytes(), dst, len)?;
                EndpointStats::add(&self.stats.bytes, len);
                Ok(RESULT_OK)
            }
            OP_COMPARE => {
                if self.compare(bus, tag, src, dst, len)? {
                    Ok(RESULT_OK)
                } else {
                    self.regs.status |= STATUS_MISCOMPARE;
                    Ok(RESULT_MISCOMPARE)
                }
            }
            _ => Err(bad),
        }
    }

    /// Has the IOMMU translate `[iova, iova + len)` for one access; returns the output
    /// address and how many bytes of the range it covers (at least one).
    fn translate(
        &mut self,
        bus: &Bus<'_>,
        tag: Tag,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<(u64, u64), AccessError> {
        let access = if write {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let req = DmaRequest {
            pasid: tag.pasid,
            privileged: tag.privileged,
            ..DmaRequest::new(self.source_id, iova, len, access)
        };
        EndpointStats::add(&self.stats.translations, 1);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        let mut record = TranslationRecord {
            iova,
            phys: None,
            len: 0,
            page_shift: 0,
            write,
            pasid: tag.pasid,
        };
        let out = match bus.iommu.translate(&req) {
            Ok(t) if access.allowed_by(t.perms) => {
                let n = t.len.clamp(1, len.max(1));
                record = TranslationRecord {
                    phys: Some(t.addr),
                    len: n,
                    page_shift: t.page_shift,
                    ..record
                };
                Ok((t.addr, n))
            }
            Ok(_) => Err(no_permission(&req)),
            Err(f) => Err(f),
        };
        let out = out.map_err(|f| {
            EndpointStats::add(&self.stats.faults, 1);
            AccessError::Fault(iova, f)
        });
        self.recent.push_back(record);
        out
    }

    /// Reads guest RAM at IOVA `iova` into `buf`, page by page through the IOMMU.
    fn read(
        &mut self,
        bus: &Bus<'_>,
        tag: Tag,
        iova: u64,
        buf: &mut [u8],
    ) -> Result<(), AccessError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = iova.wrapping_add(done as u64);
            let (phys, n) = self.translate(bus, tag, a, (buf.len() - done) as u64, false)?;
            let n = n as usize;
            bus.ram
                .read(phys, &mut buf[done..done + n])
                .map_err(|_| self.not_ram(a))?;
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` to guest RAM at IOVA `iova`, page by page through the IOMMU.
    fn write(&mut self, bus: &Bus<'_>, tag: Tag, iova: u64, buf: &[u8]) -> Result<(), AccessError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = iova.wrapping_add(done as u64);
            let (phys, n) = self.translate(bus, tag, a, (buf.len() - done) as u64, true)?;
            let n = n as usize;
            bus.ram
                .write(phys, &buf[done..done + n])
                .map_err(|_| self.not_ram(a))?;
            done += n;
        }
        Ok(())
    }

    fn not_ram(&self, iova: u64) -> AccessError {
        EndpointStats::add(&self.stats.not_ram, 1);
        AccessError::NotRam(iova)
    }

    fn copy(
        &mut self,
        bus: &Bus<'_>,
        tag: Tag,
        src: u64,
        dst: u64,
        len: u64,
    ) -> Result<(), Failure> {
        let mut done = 0u64;
        while done < len {
            let (s, d) = (src.wrapping_add(done), dst.wrapping_add(done));
            let left = len - done;
            let (sp, sn) = self
                .translate(bus, tag, s, left, false)
                .map_err(|e| Self::failure(e, ErrorCode::SrcFault, false, tag))?;
            let (dp, dn) = self
                .translate(bus, tag, d, left, true)
                .map_err(|e| Self::failure(e, ErrorCode::DstFault, true, tag))?;
            let n = sn.min(dn);
            let from = bus
                .ram
                .slice(sp, n, false)
                .map_err(|_| Self::failure(self.not_ram(s), ErrorCode::NotRam, false, tag))?;
            let to = bus
                .ram
                .slice(dp, from.len() as u64, true)
                .map_err(|_| Self::failure(self.not_ram(d), ErrorCode::NotRam, true, tag))?;
            let m = to.len();
            let from = from.subslice(0, m).expect("clipped to the shorter slice");
            from.copy_to_volatile_slice(to);
            done += m as u64;
        }
        Ok(())
    }

    fn fill_with(
        &mut self,
        bus: &Bus<'_>,
        tag: Tag,
        pattern: [u8; 8],
        dst: u64,
        len: u64,
    ) -> Result<(), Failure> {
        for (i, b) in self.fill.iter_mut().enumerate() {
            *b = pattern[i % 8];
        }
        let mut done = 0u64;
        while done < len {
            let d = dst.wrapping_add(done);
            let (dp, dn) = self
                .translate(bus, tag, d, len - done, true)
                .map_err(|e| Self::failure(e, ErrorCode::DstFault, true, tag))?;
            let mut k = 0u64;
            while k < dn {
                let to = bus
                    .ram
                    .slice(dp + k, (dn - k).min(CMP_CHUNK as u64), true)
                    .map_err(|_| {
                        Self::failure(self.not_ram(d + k), ErrorCode::NotRam, true, tag)
                    })?;
                let phase = ((done + k) % 8) as usize;
                to.copy_from(&self.fill[phase..phase + to.len()]);
                k += to.len() as u64;
            }
            done += dn;
        }
        Ok(())
    }

    /// Whether the two buffers are equal.
    fn compare(
        &mut self,
        bus: &Bus<'_>,
        tag: Tag,
        src: u64,
        dst: u64,
        len: u64,
    ) -> Result<bool, Failure> {
        let (mut a, mut b) = std::mem::take(&mut self.cmp);
        let r = (|| {
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(CMP_CHUNK as u64) as usize;
                self.read(bus, tag, src.wrapping_add(done), &mut a[..n])
                    .map_err(|e| Self::failure(e, ErrorCode::SrcFault, false, tag))?;
                self.read(bus, tag, dst.wrapping_add(done), &mut b[..n])
                    .map_err(|e| Self::failure(e, ErrorCode::DstFault, false, tag))?;
                if a[..n] != b[..n] {
                    return Ok(false);
                }
                done += n as u64;
            }
            Ok(true)
        })();
        self.cmp = (a, b);
        r
    }
}

/// The fault of a translation that succeeded without the permission the access needs (a
/// unit refuses such requests itself; this covers a translator that does not).
fn no_permission(req: &DmaRequest) -> Fault {
    Fault::unrecorded(
        req,
        iommu_emulator::FaultKind::Permission,
        iommu_emulator::FaultSite::Output,
    )
}
