//! The vfio-user side of the daemon: PCI functions served to QEMU's `vfio-user-pci`, one
//! connection after another.
//!
//! - [`pci`]: a function's configuration space;
//! - [`regions`]: guest RAM as the client's DMA regions give it;
//! - [`function`]: a function as a connection sees it ([`function::PciFunction`]), with a
//!   [`function::Device`] behind its BAR0.
//!
//! [`server`] speaks the protocol (0.0, as QEMU's `vfio-user-pci` does) and hands each
//! message to the function through the `vfio_user` crate's `ServerBackend` trait. [`serve`]
//! serves one connection after another (QEMU exits, or a new QEMU comes), with the function
//! reset and the old connection's memory and eventfds dropped after each; a function may keep
//! the current connection to send requests of its own (interrupt writes).

pub mod function;
pub mod pci;
pub mod regions;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use function::{Device, PciFunction};
pub use server::Connection;

/// Binds `path` (replacing a stale socket file) and serves `function` on a thread named
/// `name`, one connection after another. `connected` is told of each connection when it
/// starts (`Some`) and ends (`None`); `disconnected` runs after each ends.
pub fn serve<D: Device>(
    name: String,
    path: &Path,
    mut function: PciFunction<D>,
    connected: impl Fn(Option<Arc<Connection>>) + Send + 'static,
    disconnected: impl Fn() + Send + 'static,
) -> Result<(), vfio_user::Error> {
    let listener = server::bind(path).map_err(vfio_user::Error::SocketBind)?;
    let regions = function.regions();
    let irqs = PciFunction::<D>::irqs();
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            log::info!("{name} waiting for vfio-user clients on {shown}");
            server::serve_forever(
                &listener,
                &mut function,
                &regions,
                &irqs,
                &connected,
                &mut |f: &mut PciFunction<D>| {
                    f.disconnected();
                    disconnected();
                },
                &name,
            );
        })
        .map_err(vfio_user::Error::SocketAccept)?;
    Ok(())
}
