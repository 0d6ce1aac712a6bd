//! What a unit's memory-resident structures say about one requester, read the way the unit
//! reads them: the chain of entries from the register that roots it to the entry that names the
//! page tables (VT-d: root, context, PASID-directory and PASID-table entries; AMD-Vi: the
//! device-table entry and the GCR3 entry). For the control socket and for people debugging a
//! driver: the view reads guest memory and changes nothing (no cache is looked up or filled,
//! no fault is recorded).

/// One entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructureEntry {
    /// The structure, as the spec names it (`"root entry"`, `"DTE"`, ...).
    pub name: &'static str,
    /// Its system-physical address.
    pub addr: u64,
    /// Its qwords as memory holds them.
    pub raw: Vec<u64>,
    /// Its fields, decoded (spec names; pointers as byte addresses).
    pub fields: Vec<(&'static str, u64)>,
}

/// The chain for one requester (and PASID), in the order the unit follows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StructureView {
    /// The entries read, root first.
    pub entries: Vec<StructureEntry>,
    /// Why the chain ends before the page tables, if it does (an entry not present, translation
    /// off, memory that cannot be read).
    pub stop: Option<String>,
}

impl StructureView {
    /// Appends an entry.
    pub(crate) fn push(
        &mut self,
        name: &'static str,
        addr: u64,
        raw: Vec<u64>,
        fields: Vec<(&'static str, u64)>,
    ) {
        self.entries.push(StructureEntry {
            name,
            addr,
            raw,
            fields,
        });
    }

    /// Ends the chain with `why`.
    pub(crate) fn stopped(mut self, why: impl Into<String>) -> Self {
        self.stop = Some(why.into());
        self
    }
}

/// Reads `n` qwords at `addr`, or says which could not be read.
pub(crate) fn read_qwords<M: pagewalk::PhysMem + ?Sized>(
    mem: &M,
    addr: u64,
    n: usize,
) -> Result<Vec<u64>, String> {
    (0..n as u64)
        .map(|i| {
            let a = addr + i * 8;
            mem.read_u64(a)
                .map_err(|e| format!("cannot read {a:#x}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Mapping;
    use crate::driver::amdvi::AmdViDriver;
    use crate::driver::vtd::{VtdDriver, VtdMode};
    use crate::driver::{PrivateRegion, SoftDriver};
    use pagewalk::SparseMem;
    use std::sync::Arc;

    const REGION: PrivateRegion = PrivateRegion {
        base: 0x1000_0000,
        size: 4096 * 4096,
    };

    fn drivers() -> Vec<(&'static str, Arc<dyn Driver>)> {
        let mem = || SparseMem::new(0x2000_0000);
        let vtd = |mode| -> Arc<dyn Driver> {
            Arc::new(
                VtdDriver::with_unit(mem(), crate::VtdConfig::default(), REGION, mode).unwrap(),
            )
        };
        vec![
            ("soft", Arc::new(SoftDriver::new())),
            ("vtd-legacy", vtd(VtdMode::Legacy)),
            ("vtd-scalable", vtd(VtdMode::Scalable)),
            (
                "amdvi",
                Arc::new(
                    AmdViDriver::with_unit(mem(), crate::AmdViConfig::default(), REGION).unwrap(),
                ),
            ),
        ]
    }
    use crate::driver::{Driver, EndpointMode};

    fn field(e: &StructureEntry, name: &str) -> u64 {
        e.fields
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no {name} in {e:?}"))
            .1
    }

    /// Each driver's programming of one endpoint, as the unit's structures show it: the chain
    /// reaches the entry that names the domain's tables, with the domain id the driver gave
    /// it; an endpoint the driver blocks shows that.
    #[test]
    fn the_structures_show_what_the_driver_programmed() {
        for (name, driver) in drivers() {
            let unit = driver.unit();
            let Some(before) = unit.structures(0x20, None) else {
                assert_eq!(name, "soft", "only the soft double keeps no structures");
                continue;
            };
            let d = driver.domain_alloc().unwrap();
            driver
                .map(
                    d,
                    &Mapping {
                        virt_start: 0x10_0000,
                        virt_end: 0x10_0fff,
                        phys_start: 0x20_0000,
                        flags: crate::core::MapFlags::RW,
                    },
                )
                .unwrap();
            driver
                .set_endpoint(0x20, EndpointMode::Translated(d))
                .unwrap();
            let did = driver.domain_hw_id(d).expect("a hardware domain id");
            let v = unit.structures(0x20, None).unwrap();
            assert_eq!(v.stop, None, "{name}: {v:?}");
            let last = v.entries.last().unwrap();
            let (did_field, table_field) = match name {
                "amdvi" => ("DomainID", "PtRoot"),
                "vtd-legacy" => ("DID", "SLPTPTR"),
                _ => ("DID", "PASIDDIRPTR"),
            };
            assert_eq!(field(last, did_field), did, "{name}: {last:?}");
            let tables = v
                .entries
                .iter()
                .find(|e| e.fields.iter().any(|(n, _)| *n == table_field));
            assert_ne!(field(tables.unwrap(), table_field), 0, "{name}: {v:?}");
            // Each entry sits in the table its predecessor points at.
            for pair in v.entries.windows(2) {
                let (prev, next) = (&pair[0], &pair[1]);
                assert!(
                    prev.fields.iter().any(|&(_, p)| {
                        p != 0 && p.is_multiple_of(4096) && (p..p + (2 << 20)).contains(&next.addr)
                    }),
                    "{name}: {} at {:#x} is not in a table {prev:?} names",
                    next.name,
                    next.addr
                );
            }
            // A blocked endpoint (the driver blocks every endpoint it has not attached): no
            // context entry (VT-d), or a DTE granting nothing (AMD-Vi); 0x20 was one before.
            for blocked in [before, unit.structures(0x21, None).unwrap()] {
                match name {
                    "amdvi" => {
                        let dte = blocked.entries.last().unwrap();
                        assert_eq!(field(dte, "DomainID"), 0, "{blocked:?}");
                        assert_eq!((field(dte, "IR"), field(dte, "IW")), (0, 0), "{blocked:?}");
                    }
                    _ => assert!(blocked.stop.is_some(), "{name}: {blocked:?}"),
                }
            }
        }
    }
}
