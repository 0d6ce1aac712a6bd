//! The vfio-user side of the daemon: PCI functions served to QEMU's `vfio-user-pci`, one
//! connection after another.
//!
//! - [`pci`]: a function's configuration space;
//! - [`regions`]: guest RAM as the client's DMA regions give it;
//! - [`function`]: a function as a connection sees it ([`function::PciFunction`]), with a
//!   [`function::Device`] behind its BAR0.
//!
//! The `vfio_user` crate's [`Server`] speaks the protocol (0.0, as QEMU's `vfio-user-pci`
//! does) and hands each message to the function. It serves one connection per
//! [`Server::run`]; [`serve`] runs it again after each disconnect (QEMU exits, or a new QEMU
//! comes), with the function reset and the old connection's memory and eventfds dropped. A
//! panic inside the crate on a malformed message ends that connection, not the daemon.

pub mod function;
pub mod pci;
pub mod regions;

use std::path::Path;

use vfio_user::Server;

use function::{Device, PciFunction};

/// Binds `path` (replacing a stale socket file) and serves `function` on a thread named
/// `name`, one connection after another; `disconnected` runs after each connection ends.
pub fn serve<D: Device>(
    name: String,
    path: &Path,
    mut function: PciFunction<D>,
    disconnected: impl Fn() + Send + 'static,
) -> Result<(), vfio_user::Error> {
    if path.exists() {
        std::fs::remove_file(path).map_err(vfio_user::Error::SocketBind)?;
    }
    let server = Server::new(path, true, PciFunction::<D>::irqs(), function.regions())?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            loop {
                log::info!("{name} waiting for a vfio-user client on {shown}");
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.run(&mut function)
                }));
                match served {
                    Ok(Ok(())) => log::info!("{name}: client disconnected"),
                    Ok(Err(e)) => log::warn!("{name}: connection ended: {e}"),
                    Err(_) => log::error!(
                        "{name}: the vfio-user server panicked on a message; connection dropped"
                    ),
                }
                function.disconnected();
                disconnected();
            }
        })
        .map_err(vfio_user::Error::SocketAccept)?;
    Ok(())
}
