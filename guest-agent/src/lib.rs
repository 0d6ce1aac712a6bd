//! The guest agent: a small, statically linked program that runs inside the test guest's
//! initramfs. It binds PCI devices to `vfio-pci`, drives the VFIO type1 container API
//! (`MAP_DMA` / `UNMAP_DMA`) and the DMA engine device through its VFIO device file
//! ([`dma_engine`]; moving its group to a new container: [`dma_move`]), reads
//! guest-physical addresses from `/proc/self/pagemap`, and prints one machine-readable line
//! per result (see [`report`]) on the serial console, where the host-side tests parse it.
//!
//! Built with `RUSTFLAGS="-C target-feature=+crt-static" cargo build -p guest-agent --release
//! --target x86_64-unknown-linux-gnu`; it depends on `libc` only at run time.

pub mod args;
pub mod dma_engine;
pub mod dma_move;
pub mod pagemap;
pub mod report;
#[cfg(target_os = "linux")]
pub mod sysfs;
#[cfg(target_os = "linux")]
pub mod vfio;
pub mod virtio;

use thiserror::Error;

/// Everything that can go wrong in the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The command line was not understood.
    #[error("usage: {0}")]
    Usage(String),
    /// A PCI address did not parse.
    #[error(transparent)]
    BadBdf(#[from] iommu_emulator::pci::BdfError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What the agent was doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The VFIO API answered something the agent cannot work with.
    #[error("vfio: {0}")]
    Vfio(String),
    /// A pagemap entry did not give a page frame.
    #[error("pagemap: {0}")]
    Pagemap(String),
    /// Sysfs did not hold what was expected.
    #[error("sysfs: {0}")]
    Sysfs(String),
    /// The DMA engine device answered something the agent did not expect.
    #[error("dma engine: {0}")]
    Engine(String),
}

impl AgentError {
    /// An [`AgentError::Os`] from the last OS error.
    pub fn last_os(what: impl Into<String>) -> Self {
        AgentError::Os {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// An [`AgentError::Os`] from an I/O error.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Os {
            what: what.into(),
            source,
        }
    }

    /// The errno behind this error, if it came from the OS.
    pub fn errno(&self) -> Option<i32> {
        match self {
            AgentError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The agent's result type.
pub type Result<T> = std::result::Result<T, AgentError>;
