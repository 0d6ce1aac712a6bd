//! `dma-engine --move-container`: once its other steps are done, the agent moves the DMA
//! engine's group out of the VFIO container it used into a new one, runs the copy batch again
//! there at other IOVAs, and checks that the first container's IOVAs no longer translate.
//!
//! A type1 container is one IOMMU domain: the group leaving it detaches the device from that
//! domain, and joining the new container attaches it to a new, empty one. A descriptor that
//! reads at an IOVA only the first container mapped must then fault; if it runs, the IOMMU
//! (or a translation cache of it) kept the first domain's translations for the device.
//!
//! VFIO fixes the order of the move: the device's file closed (`VFIO_GROUP_UNSET_CONTAINER`
//! is refused, `EBUSY`, while a device of the group is open), the group out, the first
//! container closed, a new one opened, the group in, `VFIO_SET_IOMMU` (the same type1
//! backend), and only then the device opened again (`VFIO_GROUP_GET_DEVICE_FD` wants a
//! container with an IOMMU). Closing the device disables it, so memory space and bus master
//! are enabled again before the engine runs.
//!
//! This module holds what needs no kernel: where the new buffers go ([`move_layout`]) and the
//! two reports ([`Move`], [`MoveFault`]).

use crate::args::DEFAULT_IOVA;
use crate::dma_engine::{CopyCheck, Layout, MSI_WINDOW, Status, code, results_list};
use crate::report::{Report, hex_list, yes};
use std::ops::{Range, RangeInclusive};

/// How far above the first container's IOVAs [`move_layout`] first tries the new ones
/// (1 GiB).
pub const MOVE_OFFSET: u64 = 1 << 30;

/// The lowest `page_size`-aligned IOVA from `low` up at which `size` bytes lie inside
/// `range` and overlap none of `avoid`, or `None`.
fn lowest_in(
    range: &RangeInclusive<u64>,
    low: u64,
    size: u64,
    page_size: u64,
    avoid: &[Range<u64>],
) -> Option<u64> {
    let mut at = (*range.start())
        .max(low)
        .checked_next_multiple_of(page_size)?;
    // Each pass either ends or moves `at` past the end of one interval of `avoid` it
    // overlapped, which it then never overlaps again: at most `avoid.len()` moves.
    for _ in 0..=avoid.len() {
        let last = at.checked_add(size.checked_sub(1)?)?;
        if last > *range.end() {
            return None;
        }
        match avoid.iter().find(|a| at < a.end && last >= a.start) {
            Some(a) => at = a.end.checked_next_multiple_of(page_size)?,
            None => return Some(at),
        }
    }
    None
}

/// Where the new container's buffers go: `old`'s layout moved to the lowest IOVA, aligned
/// to `page_size`, from `old.desc + MOVE_OFFSET` up, or failing that from [`DEFAULT_IOVA`]
/// up (never 0), at which the whole span of the layout lies inside one of `ranges` and
/// overlaps neither `old`'s span (the IOVAs the fault check reads must stay unmapped) nor
/// [`MSI_WINDOW`]. `ranges` are the IOVA ranges the new container reports, in any order;
/// `None` (the kernel reported none) stands for the whole 64-bit space. `None` if no IOVA
/// fits.
pub fn move_layout(
    old: &Layout,
    page_size: u64,
    ranges: Option<&[RangeInclusive<u64>]>,
) -> Option<Layout> {
    let span = old.span();
    let size = span.end - span.start;
    let whole = [0..=u64::MAX];
    let mut ranges: Vec<&RangeInclusive<u64>> = ranges.unwrap_or(&whole).iter().collect();
    ranges.sort_by_key(|r| *r.start());
    let avoid = [span, MSI_WINDOW];
    let lowest_from = |low: u64| {
        ranges
            .iter()
            .find_map(|r| old.at(lowest_in(r, low, size, page_size, &avoid)?))
    };
    old.desc
        .checked_add(MOVE_OFFSET)
        .and_then(lowest_from)
        .or_else(|| lowest_from(DEFAULT_IOVA))
}

/// IOVA ranges as a report value: `0x0-0xfedfffff,0xfef00000-0x7fffffffff` (inclusive
/// ends), or `unreported`.
pub fn ranges_list(ranges: Option<&[RangeInclusive<u64>]>) -> String {
    match ranges {
        None => "unreported".into(),
        Some(r) => r
            .iter()
            .map(|r| format!("{:#x}-{:#x}", r.start(), r.end()))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The copy batch in the new container: the `dma-move` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The first container's layout.
    pub old: Layout,
    /// The new container's, from [`move_layout`].
    pub new: Layout,
    /// The IOVA ranges the new container reported (`None`: none).
    pub ranges: Option<Vec<RangeInclusive<u64>>>,
    /// The command register once memory space and bus master were enabled again.
    pub command: u16,
    /// The new descriptor page's guest-physical frame.
    pub desc_gpa: u64,
    /// The new source buffer's frames.
    pub src_gpas: Vec<u64>,
    /// The new destination buffer's frames.
    pub dst_gpas: Vec<u64>,
    /// What the batch left.
    pub copy: CopyCheck,
}

impl Move {
    /// `AGENT dma-move old_iova= new_iova= src_iova= dst_iova= len= desc_gpa= src_gpas=
    /// dst_gpas= iova_ranges= command= status= results= irq= dst_ok= src_ok= status_ok=`:
    /// `old_iova` and `new_iova` are the two layouts' first IOVAs (their descriptor pages);
    /// the other names mean what they mean in `dma-map` and `dma-batch name=copy`, for the
    /// new container.
    pub fn report(&self) -> Report {
        let c = &self.copy;
        Report::new("dma-move")
            .hex("old_iova", self.old.desc)
            .hex("new_iova", self.new.desc)
            .hex("src_iova", self.new.src)
            .hex("dst_iova", self.new.dst)
            .hex("len", self.new.len)
            .hex("desc_gpa", self.desc_gpa)
            .field("src_gpas", hex_list(&self.src_gpas))
            .field("dst_gpas", hex_list(&self.dst_gpas))
            .field("iova_ranges", ranges_list(self.ranges.as_deref()))
            .hex("command", u64::from(self.command))
            .hex("status", u64::from(c.status.0))
            .field("results", results_list(&c.results))
            .field("irq", yes(c.irq))
            .field("dst_ok", yes(c.dst_ok))
            .field("src_ok", yes(c.src_ok))
            .field("status_ok", yes(c.status_ok()))
    }

    /// Why the batch failed, or `None` (see [`CopyCheck::failure`]).
    pub fn failure(&self) -> Option<String> {
        self.copy.failure("copy batch in the new container")
    }
}

/// One COPY in the new container from the first container's source IOVA: the
/// `dma-move-fault` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveFault {
    /// The descriptor's source: the first container's source IOVA.
    pub src_iova: u64,
    /// Its destination: the new container's destination IOVA.
    pub dst_iova: u64,
    /// `STATUS` once the batch ended.
    pub status: Status,
    /// `ERROR_ADDR`.
    pub error_addr: u64,
    /// `ERROR_INFO`.
    pub error_info: u32,
    /// The descriptor's RESULT.
    pub result: u32,
    /// Whether the completion interrupt arrived.
    pub irq: bool,
}

impl MoveFault {
    /// Whether the batch stopped on an error with `SRC_FAULT` or `DST_FAULT`, as an access
    /// the IOMMU does not translate stops it.
    pub fn fault_ok(&self) -> bool {
        self.status.error() && matches!(self.status.error_code(), code::SRC_FAULT | code::DST_FAULT)
    }

    /// `AGENT dma-move-fault code= error_addr= error_info= code_name= src_iova= dst_iova=
    /// status= result= irq= fault_ok=`: the first six as in `dma-fault`, `src_iova` and
    /// `dst_iova` the descriptor's.
    pub fn report(&self) -> Report {
        let code = self.status.error_code();
        Report::new("dma-move-fault")
            .field("code", code)
            .hex("error_addr", self.error_addr)
            .hex("error_info", u64::from(self.error_info))
            .field("code_name", code::name(code))
            .hex("src_iova", self.src_iova)
            .hex("dst_iova", self.dst_iova)
            .hex("status", u64::from(self.status.0))
            .hex("result", u64::from(self.result))
            .field("irq", yes(self.irq))
            .field("fault_ok", yes(self.fault_ok()))
    }

    /// Why the check failed (the COPY ran, or stopped on another error), or `None`.
    pub fn failure(&self) -> Option<String> {
        if self.fault_ok() {
            return None;
        }
        let what = format!(
            "a COPY in the new container from the first container's IOVA {:#x}",
            self.src_iova
        );
        let s = self.status;
        Some(if s.done() && !s.error() {
            format!(
                "{what} ran (STATUS {:#x}): a translation of the first container outlived it",
                s.0
            )
        } else {
            format!(
                "{what}: STATUS {:#x}, error code {} ({}); want SRC_FAULT or DST_FAULT",
                s.0,
                s.error_code(),
                code::name(s.error_code())
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_engine::{RESULT_ERROR, RESULT_OK, UNMAPPED_OFFSET};
    use proptest::prelude::*;

    const PAGE: u64 = 4096;

    fn layout(iova: u64, pages: u64) -> Layout {
        Layout::new(iova, pages, PAGE).unwrap()
    }

    /// What x86 guests' type1 containers report: below the MSI window, and above it up to
    /// a 39-bit address width.
    fn x86_ranges() -> Vec<RangeInclusive<u64>> {
        vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff]
    }

    fn new_desc(old: u64, pages: u64, ranges: Option<&[RangeInclusive<u64>]>) -> Option<u64> {
        move_layout(&layout(old, pages), PAGE, ranges).map(|l| l.desc)
    }

    #[test]
    fn new_iovas_are_one_gib_up_when_that_fits() {
        let old = layout(0x10_0000, 4);
        let new = move_layout(&old, PAGE, Some(&x86_ranges())).unwrap();
        assert_eq!(new, layout(0x4010_0000, 4));
        assert_eq!(new.span(), 0x4010_0000..0x4010_9000);
        assert_eq!(move_layout(&old, PAGE, None), Some(new));
        // The largest buffers (512 pages each) too.
        assert_eq!(
            new_desc(0x10_0000, 512, Some(&x86_ranges())),
            Some(0x4010_0000)
        );
    }

    #[test]
    fn new_iovas_step_over_the_msi_window() {
        // 1 GiB up is the MSI window's start: past its end, whether the ranges leave it out
        // or (no ranges reported) not.
        assert_eq!(new_desc(0xbee0_0000, 4, None), Some(0xfef0_0000));
        assert_eq!(
            new_desc(0xbee0_0000, 4, Some(&x86_ranges())),
            Some(0xfef0_0000)
        );
        // A span that would end inside the window, or reach across it.
        assert_eq!(new_desc(0xbedf_c000, 4, None), Some(0xfef0_0000));
        assert_eq!(new_desc(0xbedf_c000, 512, None), Some(0xfef0_0000));
        // A span that ends just below the window stays.
        let below = 0xfee0_0000 - 0x9000 - MOVE_OFFSET;
        assert_eq!(new_desc(below, 4, None), Some(below + MOVE_OFFSET));
    }

    #[test]
    fn new_iovas_find_the_next_range() {
        // A gap between reported ranges (listed out of order), and a start not page-aligned.
        let ranges = [0x8000_0001..=0x8fff_ffff, 0..=0x4000_0fff];
        assert_eq!(new_desc(0x10_0000, 4, Some(&ranges)), Some(0x8000_1000));
        // 1 GiB up lies past every range: the lowest fit from 1 MiB, after the first
        // container's span rather than on it.
        let one_gib = [0..=0x3fff_ffff];
        assert_eq!(new_desc(0x10_0000, 4, Some(&one_gib)), Some(0x10_9000));
        assert_eq!(new_desc(0x20_0000, 4, Some(&one_gib)), Some(0x10_0000));
        // 1 GiB up overflows.
        let top = (u64::MAX - UNMAPPED_OFFSET) & !(PAGE - 1);
        assert_eq!(new_desc(top, 1, None), Some(0x10_0000));
    }

    #[test]
    fn no_room_is_none() {
        assert_eq!(new_desc(0x10_0000, 4, Some(&[])), None);
        // Smaller than the span, or holding only the first container's span.
        assert_eq!(
            new_desc(0x10_0000, 4, Some(&[0x4000_0000..=0x4000_7fff])),
            None
        );
        assert_eq!(new_desc(0x10_0000, 4, Some(&[0x10_0000..=0x10_8fff])), None);
        // Only the MSI window and what lies just around it.
        assert_eq!(
            new_desc(0x10_0000, 4, Some(&[0xfee0_0000..=0xfef0_7fff])),
            None
        );
        // Room for the span, but none for the unmapped IOVA a layout keeps 256 MiB above
        // its start.
        let near_top = [u64::MAX - 0x1_0000..=u64::MAX];
        assert_eq!(new_desc(0x10_0000, 4, Some(&near_top)), None);
    }

    fn copy_ok() -> CopyCheck {
        CopyCheck {
            status: Status(0x0003_0001),
            results: vec![RESULT_OK; 3],
            irq: true,
            src_ok: true,
            dst_ok: true,
        }
    }

    fn a_move() -> Move {
        Move {
            old: layout(0x10_0000, 2),
            new: layout(0x4010_0000, 2),
            ranges: Some(x86_ranges()),
            command: 0x6,
            desc_gpa: 0x7_7000,
            src_gpas: vec![0x12_3000, 0x4_5000],
            dst_gpas: vec![0x9_9000, 0x1_0000_0000],
            copy: copy_ok(),
        }
    }

    #[test]
    fn move_report_line() {
        let m = a_move();
        assert_eq!(
            m.report().to_line(),
            "AGENT dma-move old_iova=0x100000 new_iova=0x40100000 src_iova=0x40101000 \
             dst_iova=0x40103000 len=0x2000 desc_gpa=0x77000 src_gpas=0x123000,0x45000 \
             dst_gpas=0x99000,0x100000000 iova_ranges=0x0-0xfedfffff,0xfef00000-0x7fffffffff \
             command=0x6 status=0x30001 results=1,1,1 irq=yes dst_ok=yes src_ok=yes \
             status_ok=yes"
        );
        assert_eq!(m.failure(), None);
        // The host's checks read it back.
        let p = crate::report::parse_line(&m.report().to_line()).unwrap();
        assert_eq!(p.get_u64("src_iova"), Some(0x4010_1000));
        assert_eq!(p.get("results"), Some("1,1,1"));
        let bad = Move {
            ranges: None,
            copy: CopyCheck {
                dst_ok: false,
                ..copy_ok()
            },
            ..m
        };
        let r = bad.report();
        assert_eq!(
            (r.get("iova_ranges"), r.get("dst_ok")),
            (Some("unreported"), Some("no"))
        );
        let msg = bad.failure().unwrap();
        assert!(
            msg.starts_with("copy batch in the new container:") && msg.contains("dst_ok no"),
            "{msg}"
        );
    }

    fn a_fault(status: u32) -> MoveFault {
        MoveFault {
            src_iova: 0x10_1000,
            dst_iova: 0x4010_3000,
            status: Status(status),
            error_addr: 0x10_1000,
            error_info: 0x1,
            result: RESULT_ERROR | u32::from(code::SRC_FAULT),
            irq: true,
        }
    }

    #[test]
    fn move_fault_report_line() {
        // COUNT 0, SRC_FAULT, ERROR
        let f = a_fault(0x0000_0202);
        assert!(f.fault_ok());
        assert_eq!(f.failure(), None);
        assert_eq!(
            f.report().to_line(),
            "AGENT dma-move-fault code=2 error_addr=0x101000 error_info=0x1 \
             code_name=SRC_FAULT src_iova=0x101000 dst_iova=0x40103000 status=0x202 \
             result=0x82 irq=yes fault_ok=yes"
        );
        assert!(a_fault(0x0000_0302).fault_ok(), "DST_FAULT");
    }

    #[test]
    fn a_copy_that_runs_or_fails_otherwise_is_a_failure() {
        // DONE: the old IOVA still translated.
        let ran = a_fault(0x0001_0001);
        assert_eq!(ran.report().get("fault_ok"), Some("no"));
        let m = ran.failure().unwrap();
        assert!(m.contains("0x101000 ran") && m.contains("outlived"), "{m}");
        // NOT_RAM, DESC_FAULT, and no end at all.
        for (status, name) in [
            (0x0000_0402, "NOT_RAM"),
            (0x0000_0102, "DESC_FAULT"),
            (0, "none"),
        ] {
            let f = a_fault(status);
            assert!(!f.fault_ok(), "{status:#x}");
            let m = f.failure().unwrap();
            assert!(m.contains(name) && m.contains("want SRC_FAULT"), "{m}");
        }
        // An error code without the ERROR bit is no fault.
        assert!(!a_fault(0x0000_0200).fault_ok());
    }

    proptest! {
        #[test]
        fn a_new_layout_fits_one_range_and_avoids_the_old_one_and_msi(
            old_page in 1u64..(1 << 28),
            pages in 1u64..=512,
            raw in proptest::collection::vec((0u64..(1 << 29), 0u64..(1 << 19)), 0..4),
            none in any::<bool>(),
        ) {
            // Ranges of up to 2 GiB anywhere in the low 2^41 bytes, some overlapping.
            let ranges: Vec<RangeInclusive<u64>> =
                raw.iter().map(|&(s, l)| (s << 12)..=(s << 12) + (l << 12) + 0xfff).collect();
            let reported = (!none).then_some(ranges.as_slice());
            let old = layout(old_page * PAGE, pages);
            if let Some(new) = move_layout(&old, PAGE, reported) {
                let span = new.span();
                prop_assert_eq!(new.desc % PAGE, 0);
                prop_assert!(new.desc >= DEFAULT_IOVA);
                prop_assert_eq!(Some(new), old.at(new.desc));
                prop_assert!(span.end <= old.desc || span.start >= old.span().end);
                prop_assert!(span.end <= MSI_WINDOW.start || span.start >= MSI_WINDOW.end);
                let inside = |r: &RangeInclusive<u64>| {
                    *r.start() <= span.start && span.end - 1 <= *r.end()
                };
                prop_assert!(reported.is_none_or(|r| r.iter().any(inside)));
            } else {
                // Only reported ranges can leave no room (the whole space always has some).
                prop_assert!(reported.is_some());
            }
        }
    }
}
