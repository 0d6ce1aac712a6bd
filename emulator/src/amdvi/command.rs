//! Command-buffer commands (AMD IOMMU spec #48882 rev 3.08, §2.4): decoding with the reasons a
//! command is illegal, and the encoders a driver uses.
//!
//! A command is illegal (§2.4: the IOMMU writes ILLEGAL_COMMAND_ERROR and stops the command
//! buffer) when its opcode is unknown, a reserved field is not zero, or it needs a feature
//! EFR does not report (INVALIDATE_IOMMU_ALL: IASup; PREFETCH_IOMMU_PAGES: PreFSup;
//! COMPLETE_PPR_REQUEST: PPRSup).

use super::cache::PagesInvalidation;
use super::layout::*;

/// A decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// COMPLETION_WAIT (§2.4.1).
    CompletionWait {
        /// S: store `data` at `addr`.
        store: bool,
        /// I: set Status.ComWaitInt and interrupt if enabled.
        interrupt: bool,
        /// F: flush queue.
        fence: bool,
        /// The store address (8-byte aligned).
        addr: u64,
        /// The store data.
        data: u64,
    },
    /// INVALIDATE_DEVTAB_ENTRY (§2.4.2).
    InvalidateDevtabEntry {
        /// DeviceID.
        device_id: u16,
    },
    /// INVALIDATE_IOMMU_PAGES (§2.4.3).
    InvalidateIommuPages(PagesInvalidation),
    /// INVALIDATE_IOTLB_PAGES (§2.4.4): a device-side IOTLB invalidation.
    InvalidateIotlbPages {
        /// DeviceID.
        device_id: u16,
    },
    /// INVALIDATE_INTERRUPT_TABLE (§2.4.5).
    InvalidateInterruptTable {
        /// DeviceID.
        device_id: u16,
    },
    /// PREFETCH_IOMMU_PAGES (§2.4.6).
    PrefetchIommuPages {
        /// DeviceID.
        device_id: u16,
        /// The PASID, when GN=1.
        pasid: Option<u32>,
        /// The first page's address.
        addr: u64,
        /// Pages to prefetch (PFCount; with S=1 the address's range).
        count: u8,
        /// Inval: invalidate the pages before prefetching.
        inval: bool,
    },
    /// COMPLETE_PPR_REQUEST (§2.4.7).
    CompletePprRequest {
        /// DeviceID.
        device_id: u16,
    },
    /// INVALIDATE_IOMMU_ALL (§2.4.8).
    InvalidateIommuAll,
}

/// Why a command is illegal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IllegalCommand {
    /// The opcode is not defined.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// A reserved field is set.
    #[error("reserved bits set in a command with opcode {0:#x}")]
    Reserved(u8),
    /// The command needs a feature EFR does not report.
    #[error("opcode {0:#x} needs a feature the unit does not report")]
    Unsupported(u8),
}

/// Decodes the command `[qw0, qw1]` for a unit reporting `efr`.
pub fn decode(qw: [u64; 2], efr: Efr) -> Result<Command, IllegalCommand> {
    let [q0, q1] = qw;
    let op = command_opcode(q0);
    let rsvd = |bad: bool| {
        if bad {
            Err(IllegalCommand::Reserved(op))
        } else {
            Ok(())
        }
    };
    let need = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(IllegalCommand::Unsupported(op))
        }
    };
    match op {
        opcode::COMPLETION_WAIT => {
            let c = CompletionWait::from_bits(q0);
            rsvd(c.rsvd() != 0)?;
            Ok(Command::CompletionWait {
                store: c.s(),
                interrupt: c.i(),
                fence: c.f(),
                addr: c.store_qword() << 3,
                data: q1,
            })
        }
        opcode::INVALIDATE_DEVTAB_ENTRY | opcode::INVALIDATE_INTERRUPT_TABLE => {
            let c = DeviceCommand::from_bits(q0);
            rsvd(c.rsvd() != 0 || q1 != 0)?;
            let device_id = c.device_id();
            Ok(if op == opcode::INVALIDATE_DEVTAB_ENTRY {
                Command::InvalidateDevtabEntry { device_id }
            } else {
                Command::InvalidateInterruptTable { device_id }
            })
        }
        opcode::INVALIDATE_IOMMU_PAGES => {
            let c = InvPagesQw0::from_bits(q0);
            let a = PagesQw1::from_bits(q1);
            rsvd(c.rsvd0() != 0 || c.rsvd1() != 0 || a.rsvd() != 0)?;
            Ok(Command::InvalidateIommuPages(PagesInvalidation {
                domain: c.domain_id(),
                pasid: a.gn().then_some(c.pasid()),
                addr: a.page() << 12,
                s: a.s(),
                pde: a.pde(),
            }))
        }
        opcode::INVALIDATE_IOTLB_PAGES => {
            let c = InvIotlbQw0::from_bits(q0);
            rsvd(c.rsvd() != 0 || q1 & INV_IOTLB_QW1_RSVD != 0)?;
            Ok(Command::InvalidateIotlbPages {
                device_id: c.device_id(),
            })
        }
        opcode::PREFETCH_IOMMU_PAGES => {
            need(efr.pref_sup())?;
            let c = PrefetchQw0::from_bits(q0);
            let a = PagesQw1::from_bits(q1);
            rsvd(c.rsvd0() != 0 || c.rsvd1() != 0 || q1 & PREFETCH_QW1_RSVD != 0)?;
            Ok(Command::PrefetchIommuPages {
                device_id: c.device_id(),
                pasid: a.gn().then_some(c.pasid()),
                addr: a.page() << 12,
                count: c.pf_count(),
                inval: q1 & PREFETCH_INVAL != 0,
            })
        }
        opcode::COMPLETE_PPR_REQUEST => {
            need(efr.ppr_sup())?;
            let c = CompletePprQw0::from_bits(q0);
            rsvd(c.rsvd0() != 0 || c.rsvd1() != 0 || q1 & COMPLETE_PPR_QW1_RSVD != 0)?;
            Ok(Command::CompletePprRequest {
                device_id: c.device_id(),
            })
        }
        opcode::INVALIDATE_IOMMU_ALL => {
            need(efr.ia_sup())?;
            rsvd(q0 & !(0xf << 60) != 0 || q1 != 0)?;
            Ok(Command::InvalidateIommuAll)
        }
        _ => Err(IllegalCommand::Opcode(op)),
    }
}

/// Command encoders, for drivers (each the inverse of [`decode`]).
pub mod encode {
    use super::*;

    /// COMPLETION_WAIT storing `data` at `addr` (8-byte aligned), with I and F as given.
    pub fn completion_wait(addr: u64, data: u64, interrupt: bool, fence: bool) -> [u64; 2] {
        let q0 = CompletionWait::new()
            .with_s(true)
            .with_i(interrupt)
            .with_f(fence)
            .with_store_qword(addr >> 3)
            .with_op(opcode::COMPLETION_WAIT);
        [q0.into_bits(), data]
    }

    /// INVALIDATE_DEVTAB_ENTRY for `device_id`.
    pub fn invalidate_devtab_entry(device_id: u16) -> [u64; 2] {
        let q0 = DeviceCommand::new()
            .with_device_id(device_id)
            .with_op(opcode::INVALIDATE_DEVTAB_ENTRY);
        [q0.into_bits(), 0]
    }

    /// INVALIDATE_IOMMU_PAGES as `p` names it.
    pub fn invalidate_iommu_pages(p: PagesInvalidation) -> [u64; 2] {
        let q0 = InvPagesQw0::new()
            .with_pasid(p.pasid.unwrap_or(0) & 0xf_ffff)
            .with_domain_id(p.domain)
            .with_op(opcode::INVALIDATE_IOMMU_PAGES);
        let q1 = PagesQw1::new()
            .with_s(p.s)
            .with_pde(p.pde)
            .with_gn(p.pasid.is_some())
            .with_page(p.addr >> 12);
        [q0.into_bits(), q1.into_bits()]
    }

    /// INVALIDATE_IOMMU_PAGES of the byte range `[start, start + len)` of `domain`'s host
    /// (GN=0) or `pasid`'s guest (GN=1) translations, page-directory entries included: one page
    /// with S=0, else the smallest aligned power-of-two range that covers it, with the address
    /// bits below its size set to ones and S=1 (§2.4.3).
    pub fn invalidate_range(domain: u16, pasid: Option<u32>, start: u64, len: u64) -> [u64; 2] {
        let end = start.saturating_add(len.max(1) - 1);
        let (addr, s) = if start >> 12 == end >> 12 {
            (start & !0xfff, false)
        } else {
            let msb = 63 - (start ^ end).leading_zeros();
            if msb >= 51 {
                (INV_ALL_PAGES, true)
            } else {
                // Bit `msb` of `start` is clear (start < end differ there first): it becomes
                // the lowest clear bit, so the range is 2^(msb + 1) bytes.
                (start | ((1u64 << msb) - 1), true)
            }
        };
        invalidate_iommu_pages(PagesInvalidation {
            domain,
            pasid,
            addr: addr & !0xfff,
            s,
            pde: true,
        })
    }

    /// INVALIDATE_IOMMU_PAGES of every page of `domain` (and, with `pasid`, of that PASID).
    pub fn invalidate_domain(domain: u16, pasid: Option<u32>) -> [u64; 2] {
        invalidate_iommu_pages(PagesInvalidation {
            domain,
            pasid,
            addr: INV_ALL_PAGES,
            s: true,
            pde: true,
        })
    }

    /// INVALIDATE_IOMMU_ALL.
    pub fn invalidate_all() -> [u64; 2] {
        [u64::from(opcode::INVALIDATE_IOMMU_ALL) << 60, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn efr() -> Efr {
        crate::amdvi::AmdViConfig::default().efr()
    }

    #[test]
    fn completion_wait_has_the_spec_bit_positions() {
        // Hand-built: S (bit 0), I (bit 1), store address 51:3, opcode 1 at 63:60.
        let q0 = 1 | 2 | 0x1234_5678_0000 | (1 << 60);
        assert_eq!(
            encode::completion_wait(0x1234_5678_0000, 9, true, false),
            [q0, 9]
        );
        assert_eq!(
            decode([q0, 9], efr()),
            Ok(Command::CompletionWait {
                store: true,
                interrupt: true,
                fence: false,
                addr: 0x1234_5678_0000,
                data: 9
            })
        );
    }

    #[test]
    fn invalidate_pages_fields_sit_where_the_spec_puts_them() {
        let p = PagesInvalidation {
            domain: 0x42,
            pasid: Some(0x12345),
            addr: 0x7000,
            s: true,
            pde: true,
        };
        let [q0, q1] = encode::invalidate_iommu_pages(p);
        assert_eq!(q0, 0x12345 | (0x42 << 32) | (3 << 60));
        assert_eq!(q1, 0x7000 | 0b111);
        assert_eq!(
            decode([q0, q1], efr()),
            Ok(Command::InvalidateIommuPages(p))
        );
    }

    #[test]
    fn illegal_commands_are_named() {
        assert_eq!(decode([0, 0], efr()), Err(IllegalCommand::Opcode(0)));
        assert_eq!(
            decode([0xf << 60, 0], efr()),
            Err(IllegalCommand::Opcode(0xf))
        );
        let devtab = encode::invalidate_devtab_entry(5);
        assert_eq!(
            decode([devtab[0] | 1 << 20, 0], efr()),
            Err(IllegalCommand::Reserved(2))
        );
        assert_eq!(
            decode([devtab[0], 1], efr()),
            Err(IllegalCommand::Reserved(2))
        );
        let no_ia = efr().with_ia_sup(false);
        assert_eq!(
            decode(encode::invalidate_all(), no_ia),
            Err(IllegalCommand::Unsupported(8))
        );
        assert_eq!(
            decode(encode::invalidate_all(), efr()),
            Ok(Command::InvalidateIommuAll)
        );
    }

    #[test]
    fn a_range_invalidation_covers_its_bytes_and_is_aligned() {
        for (start, len) in [
            (0x1000u64, 0x1000u64),
            (0x1000, 0x2000),
            (0x3000, 0x5000),
            (0x20_0000, 0x20_0000),
            (0xfff_f000, 0x2000),
            (0, u64::MAX),
        ] {
            let [_, q1] = encode::invalidate_range(1, None, start, len);
            let a = PagesQw1::from_bits(q1);
            let r = iotlb::PageRange::amd(1, iotlb::PasidMatch::Any, a.page() << 12, a.s(), true);
            let first = r.base << 12;
            let last = first.saturating_add(
                1u64.checked_shl(u32::from(r.order) + 12)
                    .map_or(u64::MAX, |n| n - 1),
            );
            assert!(first <= start, "{start:#x}+{len:#x}: {first:#x}");
            assert!(
                last >= start.saturating_add(len - 1).min(0x000f_ffff_ffff_ffff),
                "{start:#x}+{len:#x}: {last:#x}"
            );
        }
    }
}
