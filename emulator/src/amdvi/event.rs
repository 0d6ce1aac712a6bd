//! Event-log records (AMD IOMMU spec #48882 rev 3.08, §2.5): what the unit writes at the event
//! log's tail, typed, with the encoding of [`super::layout::EventQw0`].

use super::layout::{EventFlags, EventQw0, event_code};

/// The event codes the model writes (§2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventCode {
    /// ILLEGAL_DEV_TABLE_ENTRY (§2.5.2): a DTE with reserved bits or bad fields, or a device
    /// id beyond the device table.
    IllegalDevTableEntry = event_code::ILLEGAL_DEV_TABLE_ENTRY,
    /// IO_PAGE_FAULT (§2.5.3): a translation found no page, or one that does not allow the
    /// access, or a reserved bit on the way.
    IoPageFault = event_code::IO_PAGE_FAULT,
    /// DEV_TAB_HARDWARE_ERROR (§2.5.4): the DTE could not be read.
    DevTabHardwareError = event_code::DEV_TAB_HARDWARE_ERROR,
    /// PAGE_TAB_HARDWARE_ERROR (§2.5.5): a page-table or GCR3-table entry could not be read
    /// or updated.
    PageTabHardwareError = event_code::PAGE_TAB_HARDWARE_ERROR,
    /// ILLEGAL_COMMAND_ERROR (§2.5.6): the command buffer held an illegal command.
    IllegalCommandError = event_code::ILLEGAL_COMMAND_ERROR,
    /// COMMAND_HARDWARE_ERROR (§2.5.7): a command (or a COMPLETION_WAIT store) could not be
    /// read (written).
    CommandHardwareError = event_code::COMMAND_HARDWARE_ERROR,
    /// IOTLB_INV_TIMEOUT (§2.5.8): a device did not answer an IOTLB invalidation. The model has
    /// no device-side IOTLB, so it never writes one; the code exists for decoding.
    IotlbInvTimeout = event_code::IOTLB_INV_TIMEOUT,
    /// INVALID_DEVICE_REQUEST (§2.5.9): a request the DTE does not allow the device to make
    /// (a PASID without guest translation, a translation request with DTE.I = 0).
    InvalidDeviceRequest = event_code::INVALID_DEVICE_REQUEST,
}

impl EventCode {
    /// The code of `v`, if it is one of the model's.
    pub fn from_code(v: u8) -> Option<Self> {
        use EventCode::*;
        Some(match v {
            event_code::ILLEGAL_DEV_TABLE_ENTRY => IllegalDevTableEntry,
            event_code::IO_PAGE_FAULT => IoPageFault,
            event_code::DEV_TAB_HARDWARE_ERROR => DevTabHardwareError,
            event_code::PAGE_TAB_HARDWARE_ERROR => PageTabHardwareError,
            event_code::ILLEGAL_COMMAND_ERROR => IllegalCommandError,
            event_code::COMMAND_HARDWARE_ERROR => CommandHardwareError,
            event_code::IOTLB_INV_TIMEOUT => IotlbInvTimeout,
            event_code::INVALID_DEVICE_REQUEST => InvalidDeviceRequest,
            _ => return None,
        })
    }
}

/// One event-log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// The event code.
    pub code: EventCode,
    /// The requester (DeviceID); 0 for command errors.
    pub device_id: u16,
    /// The PASID, for a guest-translation request (flag GN); its bits 15:0 take the DomainID
    /// field's place.
    pub pasid: Option<u32>,
    /// The DomainID, when no PASID is reported.
    pub domain_id: u16,
    /// The flags (IO_PAGE_FAULT and the other translation events).
    pub flags: EventFlags,
    /// The address: the request's for translation events, the DTE's for
    /// DEV_TAB_HARDWARE_ERROR, the entry's for PAGE_TAB_HARDWARE_ERROR, the command's for the
    /// command errors.
    pub addr: u64,
}

/// Why a record does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// The code is not one the model writes.
    #[error("unknown event code {0:#x}")]
    Code(u8),
}

impl Event {
    /// A command error at the command `addr`.
    pub fn command(code: EventCode, addr: u64) -> Self {
        Self {
            code,
            device_id: 0,
            pasid: None,
            domain_id: 0,
            flags: EventFlags::empty(),
            addr,
        }
    }

    /// The 128-bit record (§2.5).
    pub fn encode(&self) -> [u64; 2] {
        let mut flags = self.flags;
        let (hi, field) = match self.pasid {
            Some(p) => {
                flags |= EventFlags::GN;
                (((p >> 16) & 0xf) as u8, (p & 0xffff) as u16)
            }
            None => {
                flags -= EventFlags::GN;
                (0, self.domain_id)
            }
        };
        let q0 = EventQw0::new()
            .with_device_id(self.device_id)
            .with_pasid_hi(hi)
            .with_domain_or_pasid(field)
            .with_flags(flags.bits())
            .with_code(self.code as u8);
        [q0.into_bits(), self.addr]
    }

    /// Decodes a record the unit wrote.
    pub fn decode(words: [u64; 2]) -> Result<Self, EventDecodeError> {
        let q0 = EventQw0::from_bits(words[0]);
        let code = EventCode::from_code(q0.code()).ok_or(EventDecodeError::Code(q0.code()))?;
        // Every one of the 12 flag bits is defined.
        let flags = EventFlags::from_bits_truncate(q0.flags());
        let gn = flags.contains(EventFlags::GN);
        let pasid = gn.then(|| (u32::from(q0.pasid_hi()) << 16) | u32::from(q0.domain_or_pasid()));
        Ok(Self {
            code,
            device_id: q0.device_id(),
            pasid,
            domain_id: if gn { 0 } else { q0.domain_or_pasid() },
            flags: flags - EventFlags::GN,
            addr: words[1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_page_fault_record_has_the_spec_bit_positions() {
        let e = Event {
            code: EventCode::IoPageFault,
            device_id: 0x0210,
            pasid: Some(0x5_1234),
            domain_id: 0,
            flags: EventFlags::RW | EventFlags::PR | EventFlags::PE,
            addr: 0xdead_b000,
        };
        let [q0, q1] = e.encode();
        // Hand-built: DeviceID 15:0, PASID[19:16] at 19:16, PASID[15:0] at 47:32,
        // flags GN (48), PR (52), RW (53), PE (54), code 2 at 63:60.
        let want = 0x0210
            | (0x5 << 16)
            | (0x1234 << 32)
            | (1 << 48)
            | (1 << 52)
            | (1 << 53)
            | (1 << 54)
            | (2 << 60);
        assert_eq!(q0, want);
        assert_eq!(q1, 0xdead_b000);
        assert_eq!(Event::decode([q0, q1]), Ok(e));
    }

    #[test]
    fn a_domain_event_round_trips_and_unknown_codes_are_refused() {
        let e = Event {
            code: EventCode::PageTabHardwareError,
            device_id: 7,
            pasid: None,
            domain_id: 0x33,
            flags: EventFlags::TR,
            addr: 0x1000,
        };
        assert_eq!(Event::decode(e.encode()), Ok(e));
        assert_eq!(Event::decode([0, 0]), Err(EventDecodeError::Code(0)));
        assert_eq!(Event::decode([9 << 60, 0]), Err(EventDecodeError::Code(9)));
    }
}
