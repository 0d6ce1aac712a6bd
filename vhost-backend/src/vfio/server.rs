//! A vfio-user server (protocol 0.0, as QEMU 11.1's `vfio-user-pci` speaks it; the message
//! layouts are those of QEMU's `docs/interop/vfio-user.rst`, "Message Details") that can also
//! speak first: [`Connection::dma_write`] sends `VFIO_USER_DMA_WRITE` requests to the client
//! from any thread while the connection's own thread answers the client's commands. A unit's
//! interrupt messages (VT-d's FEADDR/FEDATA and IEADDR/IEDATA writes) reach the guest that
//! way: QEMU performs the write as a DMA of the function, which delivers an MSI.
//!
//! The `vfio_user` crate's server cannot send such requests (its stream is private), so this
//! one replaces it for every function; the crate's `ServerBackend` trait stays the interface
//! to a function, and its `Client` is the peer of the tests. Unlike the crate's server, this
//! one refuses malformed or oversized messages with an error reply (or, when it cannot stay in
//! step with the stream, by closing the connection) instead of panicking or allocating what a
//! message asks for.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Command numbers (`enum vfio_user_command`).
mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
}

/// Header flags: the message type in bits 3:0 (0 command, 1 reply), no-reply, error.
const FLAG_REPLY: u32 = 1;
const FLAG_TYPE_MASK: u32 = 0xf;
const FLAG_NO_REPLY: u32 = 1 << 4;
const FLAG_ERROR: u32 = 1 << 5;
/// Size of the header.
const HEADER: usize = 16;
/// The largest message accepted (the data transfer size announced plus room for a header).
pub const MAX_DATA: usize = 1 << 20;
const MAX_MESSAGE: usize = MAX_DATA + 64;

const EINVAL: u32 = 22;
const ENOSYS: u32 = 38;

/// A message header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Header {
    id: u16,
    command: u16,
    size: u32,
    flags: u32,
    error: u32,
}

impl Header {
    fn parse(b: &[u8; HEADER]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        Header {
            id: u16_at(0),
            command: u16_at(2),
            size: u32_at(4),
            flags: u32_at(8),
            error: u32_at(12),
        }
    }

    fn bytes(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }
}

/// The writing side of a connection, shared with whoever needs to speak to the client.
#[derive(Debug)]
pub struct Connection {
    writer: Mutex<UnixStream>,
    next_id: AtomicU16,
}

impl Connection {
    /// The writing side of a connection, `writer` a clone of the stream it reads.
    pub(crate) fn new(writer: UnixStream) -> Self {
        Connection {
            writer: Mutex::new(writer),
            next_id: AtomicU16::new(0),
        }
    }

    /// Sends one message in one write: a client may read a reply with a single receive (the
    /// `vfio_user` crate's does), and the lock keeps messages of several threads whole.
    fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let msg = parts.concat();
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&msg)
    }

    /// Sends `VFIO_USER_DMA_WRITE` of `data` at the function's DMA address `addr`, without
    /// asking for a reply (the client answers only a refusal). The request is the
    /// specification's: address (8 bytes), count (8 bytes), the data.
    pub fn dma_write(&self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        let count = u32::try_from(data.len())
            .ok()
            .filter(|n| (*n as usize) <= MAX_DATA)
            .ok_or_else(|| std::io::Error::other("DMA write too large"))?;
        let h = Header {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            command: cmd::DMA_WRITE,
            size: (HEADER + 16) as u32 + count,
            flags: FLAG_NO_REPLY,
            error: 0,
        };
        let mut body = Vec::with_capacity(16 + data.len());
        body.extend_from_slice(&addr.to_le_bytes());
        body.extend_from_slice(&u64::from(count).to_le_bytes());
        body.extend_from_slice(data);
        self.send(&[&h.bytes(), &body])
    }
}

/// What a connection serves: the function, its regions and interrupts as the client sees
/// them.
pub struct Served<'a> {
    /// The function.
    pub backend: &'a mut dyn ServerBackend,
    /// Its regions (`VFIO_USER_DEVICE_GET_REGION_INFO`).
    pub regions: &'a [ServerRegion],
    /// Its interrupts (`VFIO_USER_DEVICE_GET_IRQ_INFO`).
    pub irqs: &'a [IrqInfo],
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    /// The client closed it.
    #[error("the client disconnected")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A message the server cannot stay in step after (a size below its header or beyond
    /// the largest accepted).
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Reads exactly `buf.len()` bytes, taking the file descriptor sent with them (if any).
fn read_with_fd(stream: &UnixStream, buf: &mut [u8]) -> Result<Option<File>, ConnectionEnd> {
    let mut fd = None;
    let mut done = 0;
    while done < buf.len() {
        let (n, f) = stream
            .recv_with_fd(&mut buf[done..])
            .map_err(|e| ConnectionEnd::Io(std::io::Error::from_raw_os_error(e.errno())))?;
        if n == 0 {
            return Err(if done == 0 {
                ConnectionEnd::Closed
            } else {
                ConnectionEnd::Malformed("the stream ended inside a message".into())
            });
        }
        if fd.is_none() {
            fd = f;
        }
        done += n;
    }
    Ok(fd)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The answer to one command: a reply payload, or an errno.
type Answer = Result<Vec<u8>, u32>;

fn need(body: &[u8], n: usize) -> Result<(), u32> {
    if body.len() < n { Err(EINVAL) } else { Ok(()) }
}

fn errno(e: std::io::Error) -> u32 {
    e.raw_os_error().map_or(EINVAL, |n| n as u32)
}

fn handle(s: &mut Served<'_>, h: &Header, body: &[u8], fd: Option<File>) -> Answer {
    match h.command {
        cmd::VERSION => {
            need(body, 4)?;
            let caps = r#"{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":1048576}}"#;
            let mut r = Vec::new();
            r.extend_from_slice(&0u16.to_le_bytes());
            r.extend_from_slice(&0u16.to_le_bytes());
            r.extend_from_slice(caps.as_bytes());
            r.push(0);
            Ok(r)
        }
        cmd::DMA_MAP => {
            need(body, 32)?;
            let (flags, offset, addr, size) = (
                u32_at(body, 4),
                u64_at(body, 8),
                u64_at(body, 16),
                u64_at(body, 24),
            );
            s.backend
                .dma_map(DmaMapFlags::from_bits_retain(flags), offset, addr, size, fd)
                .map_err(errno)?;
            Ok(Vec::new())
        }
        cmd::DMA_UNMAP => {
            need(body, 24)?;
            let (flags, addr, size) = (u32_at(body, 4), u64_at(body, 8), u64_at(body, 16));
            s.backend
                .dma_unmap(DmaUnmapFlags::from_bits_retain(flags), addr, size)
                .map_err(errno)?;
            Ok(body[..24].to_vec())
        }
        cmd::DEVICE_GET_INFO => {
            let mut r = Vec::new();
            r.extend_from_slice(&16u32.to_le_bytes());
            r.extend_from_slice(&(VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET).to_le_bytes());
            r.extend_from_slice(&(s.regions.len() as u32).to_le_bytes());
            r.extend_from_slice(&(s.irqs.len() as u32).to_le_bytes());
            Ok(r)
        }
        cmd::DEVICE_GET_REGION_INFO => {
            need(body, 32)?;
            let index = u32_at(body, 8);
            let info = s.regions.get(index as usize).ok_or(EINVAL)?.region_info;
            let mut r = Vec::new();
            r.extend_from_slice(&32u32.to_le_bytes());
            r.extend_from_slice(&info.flags.to_le_bytes());
            r.extend_from_slice(&index.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&info.size.to_le_bytes());
            r.extend_from_slice(&info.offset.to_le_bytes());
            Ok(r)
        }
        cmd::DEVICE_GET_IRQ_INFO => {
            need(body, 16)?;
            let index = u32_at(body, 8);
            let irq = s.irqs.get(index as usize).ok_or(EINVAL)?;
            let mut r = Vec::new();
            r.extend_from_slice(&16u32.to_le_bytes());
            r.extend_from_slice(&irq.flags.to_le_bytes());
            r.extend_from_slice(&irq.index.to_le_bytes());
            r.extend_from_slice(&irq.count.to_le_bytes());
            Ok(r)
        }
        cmd::DEVICE_SET_IRQS => {
            need(body, 20)?;
            let (flags, index, start, count) = (
                u32_at(body, 4),
                u32_at(body, 8),
                u32_at(body, 12),
                u32_at(body, 16),
            );
            if index as usize >= s.irqs.len() {
                return Err(EINVAL);
            }
            s.backend
                .set_irqs(index, flags, start, count, fd.into_iter().collect())
                .map_err(errno)?;
            Ok(Vec::new())
        }
        cmd::REGION_READ => {
            need(body, 16)?;
            let (offset, region, count) = (u64_at(body, 0), u32_at(body, 8), u32_at(body, 12));
            let size = s
                .regions
                .get(region as usize)
                .ok_or(EINVAL)?
                .region_info
                .size;
            // Only what the region holds: nothing larger is allocated.
            if u64::from(count) > size || count as usize > MAX_DATA {
                return Err(EINVAL);
            }
            let mut data = vec![0u8; count as usize];
            s.backend
                .region_read(region, offset, &mut data)
                .map_err(errno)?;
            let mut r = body[..16].to_vec();
            r.extend_from_slice(&data);
            Ok(r)
        }
        cmd::REGION_WRITE => {
            need(body, 16)?;
            let (offset, region, count) = (u64_at(body, 0), u32_at(body, 8), u32_at(body, 12));
            let data = body.get(16..16 + count as usize).ok_or(EINVAL)?;
            if region as usize >= s.regions.len() {
                return Err(EINVAL);
            }
            s.backend
                .region_write(region, offset, data)
                .map_err(errno)?;
            Ok(body[..16].to_vec())
        }
        cmd::DEVICE_RESET => {
            s.backend.reset().map_err(errno)?;
            Ok(Vec::new())
        }
        _ => Err(ENOSYS),
    }
}

/// Serves one connection until the client closes it; `conn` is its writing side.
pub fn serve_connection(
    stream: &UnixStream,
    conn: &Connection,
    s: &mut Served<'_>,
) -> Result<(), ConnectionEnd> {
    loop {
        let mut hb = [0u8; HEADER];
        let fd = match read_with_fd(stream, &mut hb) {
            Ok(fd) => fd,
            Err(ConnectionEnd::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let h = Header::parse(&hb);
        let size = h.size as usize;
        if !(HEADER..=MAX_MESSAGE).contains(&size) {
            return Err(ConnectionEnd::Malformed(format!(
                "command {} of {size} bytes",
                h.command
            )));
        }
        let mut body = vec![0u8; size - HEADER];
        let more = match read_with_fd(stream, &mut body) {
            // The header came, its body did not: the client left inside a message.
            Err(ConnectionEnd::Closed) => {
                return Err(ConnectionEnd::Malformed(format!(
                    "the stream ended after the header of command {}",
                    h.command
                )));
            }
            r => r?,
        };
        let fd = fd.or(more);
        // A reply to one of our requests (we ask for none, but a client answers a request it
        // refuses with an error).
        if h.flags & FLAG_TYPE_MASK == FLAG_REPLY {
            if h.flags & FLAG_ERROR != 0 {
                log::warn!(
                    "the client refused our request {} (command {}) with errno {}",
                    h.id,
                    h.command,
                    h.error
                );
            }
            continue;
        }
        let answer = handle(s, &h, &body, fd);
        if let Err(e) = &answer {
            log::debug!("vfio-user command {} failed with errno {e}", h.command);
        }
        if h.flags & FLAG_NO_REPLY != 0 {
            continue;
        }
        let (payload, flags, error) = match answer {
            Ok(p) => (p, FLAG_REPLY, 0),
            Err(e) => (Vec::new(), FLAG_REPLY | FLAG_ERROR, e),
        };
        let reply = Header {
            id: h.id,
            command: h.command,
            size: (HEADER + payload.len()) as u32,
            flags,
            error,
        };
        conn.send(&[&reply.bytes(), &payload])?;
    }
}

/// Accepts connections on `listener` one after another, serving `function` (whose regions
/// and interrupts the client sees as `regions` and `irqs`); `connected(Some(conn))` runs when
/// one starts and `connected(None)` when it ends, then `ended` (to reset the function).
pub fn serve_forever<F: ServerBackend>(
    listener: &UnixListener,
    function: &mut F,
    regions: &[ServerRegion],
    irqs: &[IrqInfo],
    connected: &dyn Fn(Option<Arc<Connection>>),
    ended: &mut dyn FnMut(&mut F),
    name: &str,
) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("{name}: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let conn = match stream.try_clone() {
            Ok(w) => Arc::new(Connection::new(w)),
            Err(e) => {
                log::warn!("{name}: {e}");
                continue;
            }
        };
        connected(Some(conn.clone()));
        let mut served = Served {
            backend: &mut *function,
            regions,
            irqs,
        };
        match serve_connection(&stream, &conn, &mut served) {
            Ok(()) => log::info!("{name}: client disconnected"),
            Err(e) => log::warn!("{name}: connection ended: {e}"),
        }
        connected(None);
        ended(function);
    }
}

/// Binds `path`, replacing a stale socket file.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// The reading side's read, for tests that act as a client.
#[cfg(test)]
pub(crate) fn read_message(stream: &mut UnixStream) -> std::io::Result<(u16, u32, Vec<u8>)> {
    use std::io::Read;
    let mut hb = [0u8; HEADER];
    stream.read_exact(&mut hb)?;
    let h = Header::parse(&hb);
    let mut body = vec![0u8; h.size as usize - HEADER];
    stream.read_exact(&mut body)?;
    Ok((h.command, h.flags, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dma_write_is_laid_out_as_qemu_reads_it() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let c = Connection {
            writer: Mutex::new(a),
            next_id: AtomicU16::new(7),
        };
        c.dma_write(0xfee0_1000, &0x4021u32.to_le_bytes()).unwrap();
        let (command, flags, body) = read_message(&mut b).unwrap();
        assert_eq!(command, cmd::DMA_WRITE);
        assert_eq!(flags, FLAG_NO_REPLY, "a request that wants no reply");
        // Address (8), count (8), the data: QEMU 11.1 refuses a 4-byte count (E2BIG, as it
        // reads the data's first bytes as the count's upper half).
        assert_eq!(body.len(), 16 + 4);
        assert_eq!(u64_at(&body, 0), 0xfee0_1000);
        assert_eq!(u64_at(&body, 8), 4);
        assert_eq!(u32_at(&body, 16), 0x4021);
        assert!(c.dma_write(0, &vec![0; MAX_DATA + 1]).is_err());
    }

    #[test]
    fn headers_round_trip() {
        let h = Header {
            id: 0x1234,
            command: cmd::REGION_WRITE,
            size: 40,
            flags: FLAG_REPLY | FLAG_ERROR,
            error: EINVAL,
        };
        assert_eq!(Header::parse(&h.bytes()), h);
        assert_eq!(h.bytes()[..4], [0x34, 0x12, 10, 0]);
    }

    fn header(command: u16, size: usize) -> [u8; HEADER] {
        Header {
            id: 3,
            command,
            size: size as u32,
            flags: 0,
            error: 0,
        }
        .bytes()
    }

    /// A function with 16 bytes of BAR0 that records what reached it.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u32, u64, Vec<u8>)>,
    }

    impl ServerBackend for Probe {
        fn region_read(&mut self, _: u32, _: u64, data: &mut [u8]) -> std::io::Result<()> {
            data.fill(0xab);
            Ok(())
        }
        fn region_write(&mut self, r: u32, o: u64, data: &[u8]) -> std::io::Result<()> {
            self.writes.push((r, o, data.to_vec()));
            Ok(())
        }
        fn dma_map(
            &mut self,
            _: DmaMapFlags,
            _: u64,
            _: u64,
            _: u64,
            _: Option<File>,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn dma_unmap(&mut self, _: DmaUnmapFlags, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn reset(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn set_irqs(
            &mut self,
            _: u32,
            _: u32,
            _: u32,
            _: u32,
            _: Vec<File>,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn regions() -> Vec<ServerRegion> {
        vec![ServerRegion {
            region_info: vfio_bindings::bindings::vfio::vfio_region_info {
                size: 16,
                ..Default::default()
            },
            sparse_areas: Vec::new(),
            mmap_fd: None,
        }]
    }

    /// What the server thread of [`start`] ends with.
    type ServerThread = std::thread::JoinHandle<(Probe, Result<(), ConnectionEnd>)>;

    /// Runs the server on one end of a socket pair; returns the client's end and the thread.
    fn start() -> (UnixStream, ServerThread) {
        let (server, client) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let conn = Connection {
                writer: Mutex::new(server.try_clone().unwrap()),
                next_id: AtomicU16::new(0),
            };
            let mut probe = Probe::default();
            let regions = regions();
            let r = serve_connection(
                &server,
                &conn,
                &mut Served {
                    backend: &mut probe,
                    regions: &regions,
                    irqs: &[],
                },
            );
            (probe, r)
        });
        (client, t)
    }

    #[test]
    fn bad_commands_get_error_replies_and_the_connection_stays_in_step() {
        let (mut c, t) = start();
        // A read larger than the region: refused, nothing allocated for it.
        let mut m = header(cmd::REGION_READ, HEADER + 16).to_vec();
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        c.write_all(&m).unwrap();
        let (command, flags, _) = read_message(&mut c).unwrap();
        assert_eq!(
            (command, flags),
            (cmd::REGION_READ, FLAG_REPLY | FLAG_ERROR)
        );
        // An unknown command, a region that does not exist, a truncated body: errors.
        for (command, body) in [
            (99u16, vec![]),
            (cmd::REGION_WRITE, vec![0u8; 16 + 4]),
            (cmd::DMA_MAP, vec![0u8; 8]),
        ] {
            let mut body = body;
            if command == cmd::REGION_WRITE {
                body[8..12].copy_from_slice(&7u32.to_le_bytes());
                body[12..16].copy_from_slice(&4u32.to_le_bytes());
            }
            let mut m = header(command, HEADER + body.len()).to_vec();
            m.extend_from_slice(&body);
            c.write_all(&m).unwrap();
            let (got, flags, _) = read_message(&mut c).unwrap();
            assert_eq!(
                (got, flags & FLAG_ERROR),
                (command, FLAG_ERROR),
                "{command}"
            );
        }
        // A good write still goes through, and a reply from the client is ignored.
        let mut m = header(cmd::REGION_WRITE, HEADER + 16 + 2).to_vec();
        m.extend_from_slice(&4u64.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&[1, 2]);
        let mut reply = header(cmd::DMA_WRITE, HEADER).to_vec();
        reply[8] = FLAG_REPLY as u8 | FLAG_ERROR as u8;
        c.write_all(&reply).unwrap();
        c.write_all(&m).unwrap();
        let (got, flags, _) = read_message(&mut c).unwrap();
        assert_eq!((got, flags), (cmd::REGION_WRITE, FLAG_REPLY));
        // A size below the header cannot be followed: the connection ends.
        c.write_all(&header(cmd::REGION_READ, 4)).unwrap();
        let (probe, r) = t.join().unwrap();
        assert!(matches!(r, Err(ConnectionEnd::Malformed(_))), "{r:?}");
        assert_eq!(probe.writes, vec![(0, 4, vec![1, 2])]);
    }

    /// A client that leaves after a header, before any of the body it declared, ends the
    /// connection inside a message (it was once taken for a clean disconnect; found by the
    /// `vfio_messages` fuzz target).
    #[test]
    fn a_stream_ending_after_a_header_is_malformed() {
        let (mut c, t) = start();
        c.write_all(&header(cmd::REGION_WRITE, HEADER + 18))
            .unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let (_, r) = t.join().unwrap();
        assert!(matches!(r, Err(ConnectionEnd::Malformed(_))), "{r:?}");
    }
}
