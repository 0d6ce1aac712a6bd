//! PCI devices in sysfs: identity, driver, IOMMU group, and binding to `vfio-pci` through
//! `driver_override` (Documentation/ABI/testing/sysfs-bus-pci). Every function takes the sysfs
//! root so the tests run against a tree they build.

use crate::{AgentError, Result};
use iommu_emulator::PciBdf;
use std::fs;
use std::path::{Path, PathBuf};

/// The real sysfs root.
pub const SYSFS: &str = "/sys";

/// What sysfs says about one PCI device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Its address.
    pub bdf: PciBdf,
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID.
    pub device: u16,
    /// The bound driver's name, if any.
    pub driver: Option<String>,
    /// The IOMMU group number, if the device is behind an IOMMU.
    pub iommu_group: Option<u32>,
    /// The IOMMU device's sysfs name (the `iommu` link), if any.
    pub iommu: Option<String>,
    /// The type of the domain the group is attached to (`iommu_group/type`: `DMA`,
    /// `DMA-FQ`, `identity`, `blocked`, ...), if the kernel shows it.
    pub domain: Option<String>,
}

fn dev_dir(root: &Path, bdf: &PciBdf) -> PathBuf {
    root.join("bus/pci/devices").join(bdf.to_string())
}

fn read_trim(p: &Path) -> Result<String> {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| AgentError::io(format!("read {}", p.display()), e))
}

fn read_hex16(p: &Path) -> Result<u16> {
    let s = read_trim(p)?;
    let h = s.strip_prefix("0x").unwrap_or(&s);
    u16::from_str_radix(h, 16)
        .map_err(|_| AgentError::Sysfs(format!("{}: not a 16-bit hex ID: {s:?}", p.display())))
}

fn link_name(p: &Path) -> Option<String> {
    let target = fs::read_link(p).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn write(p: &Path, value: &str) -> Result<()> {
    fs::write(p, value)
        .map_err(|e| AgentError::io(format!("write {value:?} to {}", p.display()), e))
}

/// Reads one device.
pub fn device(root: &Path, bdf: &PciBdf) -> Result<PciDevice> {
    let d = dev_dir(root, bdf);
    if !d.exists() {
        return Err(AgentError::Sysfs(format!("no PCI device {bdf}")));
    }
    let iommu_group = match link_name(&d.join("iommu_group")) {
        Some(n) => Some(
            n.parse()
                .map_err(|_| AgentError::Sysfs(format!("{bdf}: iommu_group link {n:?}")))?,
        ),
        None => None,
    };
    Ok(PciDevice {
        bdf: *bdf,
        vendor: read_hex16(&d.join("vendor"))?,
        device: read_hex16(&d.join("device"))?,
        driver: link_name(&d.join("driver")),
        iommu_group,
        iommu: link_name(&d.join("iommu")),
        domain: fs::read_to_string(d.join("iommu_group/type"))
            .ok()
            .map(|t| t.trim().to_string()),
    })
}

/// All PCI devices, sorted by address.
pub fn devices(root: &Path) -> Result<Vec<PciDevice>> {
    let dir = root.join("bus/pci/devices");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(|e| AgentError::io(format!("read {}", dir.display()), e))? {
        let e = e.map_err(|e| AgentError::io("readdir", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(bdf) = name.parse::<PciBdf>() {
            out.push(device(root, &bdf)?);
        }
    }
    out.sort_by_key(|d| d.bdf);
    Ok(out)
}

/// Devices with the given vendor and device ID.
pub fn find(root: &Path, vendor: u16, device_id: u16) -> Result<Vec<PciDevice>> {
    Ok(devices(root)?
        .into_iter()
        .filter(|d| d.vendor == vendor && d.device == device_id)
        .collect())
}

/// Unbinds the device from its driver, if it has one.
pub fn unbind(root: &Path, bdf: &PciBdf) -> Result<()> {
    let d = dev_dir(root, bdf);
    if d.join("driver").exists() {
        write(&d.join("driver/unbind"), &bdf.to_string())?;
    }
    Ok(())
}

/// Binds the device to `driver` through `driver_override` and `drivers_probe`, unbinding it
/// from its current driver first. Returns the device as sysfs shows it afterwards.
pub fn bind(root: &Path, bdf: &PciBdf, driver: &str) -> Result<PciDevice> {
    let before = device(root, bdf)?;
    if before.driver.as_deref() == Some(driver) {
        return Ok(before);
    }
    let d = dev_dir(root, bdf);
    write(&d.join("driver_override"), driver)?;
    unbind(root, bdf)?;
    write(&root.join("bus/pci/drivers_probe"), &bdf.to_string())?;
    let after = device(root, bdf)?;
    if after.driver.as_deref() != Some(driver) {
        return Err(AgentError::Sysfs(format!(
            "{bdf}: still bound to {:?} after probing for {driver}",
            after.driver
        )));
    }
    Ok(after)
}

/// Clears `driver_override` and unbinds the device (a detach as the guest sees it).
pub fn release(root: &Path, bdf: &PciBdf) -> Result<()> {
    let d = dev_dir(root, bdf);
    unbind(root, bdf)?;
    // An empty write (a lone newline) clears the override.
    write(&d.join("driver_override"), "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree(PathBuf);
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tree(name: &str) -> Tree {
        let root =
            std::env::temp_dir().join(format!("guest-agent-sysfs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let devs = root.join("bus/pci/devices");
        fs::create_dir_all(&devs).unwrap();
        fs::create_dir_all(root.join("kernel/iommu_groups/3")).unwrap();
        fs::create_dir_all(root.join("bus/pci/drivers/e1000e")).unwrap();
        fs::create_dir_all(root.join("devices/virtio0/iommu/virtio0")).unwrap();
        for (bdf, vendor, device) in [
            ("0000:00:03.0", "0x1234", "0x11e8"),
            ("0000:00:02.0", "0x8086", "0x10d3"),
        ] {
            let d = devs.join(bdf);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            fs::write(d.join("device"), format!("{device}\n")).unwrap();
            fs::write(d.join("driver_override"), "(null)\n").unwrap();
        }
        let d = devs.join("0000:00:03.0");
        symlink(root.join("kernel/iommu_groups/3"), d.join("iommu_group")).unwrap();
        fs::write(root.join("kernel/iommu_groups/3/type"), "DMA-FQ\n").unwrap();
        symlink(root.join("devices/virtio0/iommu/virtio0"), d.join("iommu")).unwrap();
        symlink(
            root.join("bus/pci/drivers/e1000e"),
            devs.join("0000:00:02.0/driver"),
        )
        .unwrap();
        fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        Tree(root)
    }

    #[test]
    fn reads_ids_driver_and_group() {
        let t = tree("read");
        let d = device(&t.0, &"00:03.0".parse().unwrap()).unwrap();
        assert_eq!((d.vendor, d.device), (0x1234, 0x11e8));
        assert_eq!(d.iommu_group, Some(3));
        assert_eq!(d.iommu.as_deref(), Some("virtio0"));
        assert_eq!(d.driver, None);
        assert_eq!(d.domain.as_deref(), Some("DMA-FQ"));
        let e = device(&t.0, &"00:02.0".parse().unwrap()).unwrap();
        assert_eq!(e.driver.as_deref(), Some("e1000e"));
        assert_eq!(e.iommu_group, None);
        assert_eq!(e.domain, None);
        let all = devices(&t.0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].bdf.to_string(), "0000:00:02.0");
        let found = find(&t.0, 0x1234, 0x11e8).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bdf.device, 3);
    }

    #[test]
    fn missing_device_or_bad_ids_are_errors() {
        let t = tree("bad");
        assert!(matches!(
            device(&t.0, &"00:04.0".parse().unwrap()),
            Err(AgentError::Sysfs(_))
        ));
        fs::write(t.0.join("bus/pci/devices/0000:00:03.0/vendor"), "zz\n").unwrap();
        assert!(matches!(
            device(&t.0, &"00:03.0".parse().unwrap()),
            Err(AgentError::Sysfs(_))
        ));
    }

    #[test]
    fn bind_writes_override_and_probe_and_checks_the_result() {
        let t = tree("bind");
        let bdf: PciBdf = "00:03.0".parse().unwrap();
        // A fake tree has no kernel to bind the driver, so bind reports that it did not take.
        let err = bind(&t.0, &bdf, "vfio-pci").unwrap_err();
        assert!(matches!(err, AgentError::Sysfs(_)), "{err}");
        let d = t.0.join("bus/pci/devices/0000:00:03.0");
        assert_eq!(
            fs::read_to_string(d.join("driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(
            fs::read_to_string(t.0.join("bus/pci/drivers_probe")).unwrap(),
            "0000:00:03.0"
        );
        // When the driver is already bound, bind changes nothing.
        fs::create_dir_all(t.0.join("bus/pci/drivers/vfio-pci")).unwrap();
        symlink(t.0.join("bus/pci/drivers/vfio-pci"), d.join("driver")).unwrap();
        fs::write(d.join("driver_override"), "x").unwrap();
        let ok = bind(&t.0, &bdf, "vfio-pci").unwrap();
        assert_eq!(ok.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(fs::read_to_string(d.join("driver_override")).unwrap(), "x");
    }

    #[test]
    fn release_unbinds_and_clears_override() {
        let t = tree("release");
        let bdf: PciBdf = "00:02.0".parse().unwrap();
        release(&t.0, &bdf).unwrap();
        assert_eq!(
            fs::read_to_string(t.0.join("bus/pci/drivers/e1000e/unbind")).unwrap(),
            "0000:00:02.0"
        );
        assert_eq!(
            fs::read_to_string(t.0.join("bus/pci/devices/0000:00:02.0/driver_override")).unwrap(),
            "\n"
        );
    }
}
