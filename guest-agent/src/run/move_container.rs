//! `dma-engine --move-container` on the running system: the group moves to a new container,
//! the copy batch runs again there, and a read at the first container's IOVA must fault.
//! What it checks and why VFIO wants this order: [`guest_agent::dma_move`].

use super::{
    Irq, Plan, Session, batch, check_id, check_pgsizes, copy_batch, emit, finish, frames,
    read_results, unmap_all, write_descs,
};
use guest_agent::args::DmaArgs;
use guest_agent::dma_engine::{self as dma, Descriptor, Engine, Layout};
use guest_agent::dma_move::{self, Move, MoveFault};
use guest_agent::vfio::{Container, DmaBuffer};
use guest_agent::{AgentError, Result};

/// Moves the group of `s` out of its container into a new one and runs the checks there:
/// the copy batch on fresh buffers at the IOVAs [`dma_move::move_layout`] picks, then one
/// COPY from the first container's source IOVA, which must fault. `old` is what the first
/// container mapped (all of it unmapped again by the caller), and the caller has closed the
/// device. Reports `dma-move` and `dma-move-fault`, unmaps what it mapped, then fails if
/// either check failed.
pub(super) fn run(s: Session, a: &DmaArgs, old: &Layout) -> Result<()> {
    let s = rejoin(s, old)?;
    let ranges = s.container.iova_ranges()?;
    let new = dma_move::move_layout(old, s.page_size, ranges.as_deref()).ok_or_else(|| {
        let span = old.span();
        AgentError::Vfio(format!(
            "the new container's IOVA ranges ({}) hold no {:#x} bytes clear of the first \
             container's {:#x}..{:#x} and of the MSI window",
            dma_move::ranges_list(ranges.as_deref()),
            span.end - span.start,
            span.start,
            span.end
        ))
    })?;

    // Fresh buffers, filled unlike the first ones, mapped at the new IOVAs only.
    let mut desc = DmaBuffer::new(s.page_size as usize, 0)?;
    // At most MAX_LEN (16 MiB), by Layout::new.
    let src = DmaBuffer::new(new.len as usize, 0x33)?;
    let dst = DmaBuffer::new(new.len as usize, 0x44)?;
    s.container.map_dma(desc.vaddr(), new.desc, s.page_size)?;
    s.container.map_dma(src.vaddr(), new.src, new.len)?;
    s.container.map_dma(dst.vaddr(), new.dst, new.len)?;
    let desc_gpa = frames(&desc, s.page_size)?[0];
    let (src_gpas, dst_gpas) = (frames(&src, s.page_size)?, frames(&dst, s.page_size)?);

    // The device again: closing it disabled it, so memory space and bus master again, and
    // its interrupt.
    let dev = s.vfio_group.device(&a.bdf)?;
    let engine = Engine::new(&dev)?;
    let command = dev.enable_memory_and_bus_master()?;
    check_id(&engine, &a.bdf)?;
    let irq = Irq::setup(&dev)?;

    let plan = Plan::Iova(new);
    let (copy, _) = copy_batch(&engine, &irq, &plan, &mut desc, &src, &dst)?;
    finish(&engine, &dev, &irq)?;
    let moved = Move {
        old: *old,
        new,
        ranges,
        command,
        desc_gpa,
        src_gpas,
        dst_gpas,
        copy,
    };
    emit(moved.report());

    // A COPY from the first container's source IOVA, which the new one never mapped.
    let probe = Descriptor::copy(old.src, new.dst, new.len as u32);
    write_descs(&mut desc, &[probe])?;
    let (status, got_irq) = batch(&engine, &irq, new.desc, 1)?;
    let fault = MoveFault {
        src_iova: old.src,
        dst_iova: new.dst,
        status,
        error_addr: engine.read64(dma::REG_ERROR_ADDR)?,
        error_info: engine.read(dma::REG_ERROR_INFO)?,
        result: read_results(&desc, 1)?[0],
        irq: got_irq,
    };
    finish(&engine, &dev, &irq)?;
    emit(fault.report());

    unmap_all(&s, new.desc, s.page_size)?;
    unmap_all(&s, new.src, new.len)?;
    unmap_all(&s, new.dst, new.len)?;
    dev.disable_irq(irq.index)?;
    match moved.failure().or_else(|| fault.failure()) {
        Some(msg) => Err(AgentError::Engine(msg)),
        None => Ok(()),
    }
}

/// The group of `s` out of its container and into a new one with the same type1 backend:
/// the first container's IOVAs swept with one `UNMAP_DMA` (the caller unmapped each mapping
/// already, so it must find nothing left), `VFIO_GROUP_UNSET_CONTAINER`, the container
/// closed; then a new container, `VFIO_GROUP_SET_CONTAINER` and `VFIO_SET_IOMMU`. The
/// group's device must be closed.
fn rejoin(s: Session, old: &Layout) -> Result<Session> {
    let Session {
        container,
        vfio_group,
        group,
        iommu_type,
        page_size,
        ..
    } = s;
    let span = old.span();
    let left = container.unmap_dma(span.start, span.end - span.start)?;
    if left != 0 {
        return Err(AgentError::Vfio(format!(
            "the first container still mapped {left:#x} bytes of {:#x}..{:#x} after its last \
             step",
            span.start, span.end
        )));
    }
    vfio_group.unset_container()?;
    drop(container);
    let container = Container::open()?;
    vfio_group.set_container(&container)?;
    container.set_iommu_type(iommu_type)?;
    let pgsizes = container.iova_pgsizes()?;
    check_pgsizes(pgsizes, page_size)?;
    Ok(Session {
        container,
        vfio_group,
        group,
        iommu_type,
        pgsizes,
        page_size,
    })
}
