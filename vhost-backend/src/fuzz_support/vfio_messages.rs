//! The robustness check of the vfio-user server's message handling, shared by the cargo-fuzz
//! target `vfio_messages` and its corpus replay (`tests/fuzz_replay.rs`).
//!
//! [`check_vfio_messages`] reads its input as a stream of vfio-user messages a client sends
//! the DMA engine's function (`PciFunction<DmaEngineDevice>`, its DMA translated by the VT-d
//! model): commands with well-formed bodies whose fields come from the input (VERSION,
//! DMA_MAP with the guest-RAM file's descriptor or without one, DMA_UNMAP, DEVICE_GET_INFO,
//! GET_REGION_INFO, GET_IRQ_INFO, SET_IRQS with an eventfd or without, REGION_READ,
//! REGION_WRITE, DEVICE_RESET), commands the server does not know, raw bodies, any header
//! flags (replies, no-reply, error), and sizes that disagree with the body. The stream goes
//! through [`serve_connection`] over a socket pair, as a client's does; a thread collects the
//! replies. The oracles:
//! - nothing panics, and the connection ends as the stream's framing says: cleanly at the end
//!   of the last whole message, or as malformed at a size below the header or a message the
//!   stream ends inside;
//! - every whole command that asks for a reply gets exactly one, in order, with its id and
//!   command, flagged a reply, and with an errno exactly when flagged an error; replies and
//!   no-reply commands get none;
//! - a command whose body is shorter than its fixed part is refused with EINVAL, an unknown
//!   command with ENOSYS; DEVICE_GET_INFO always answers;
//! - a successful reply has the length its command defines (REGION_READ: its 16-byte header
//!   and the bytes asked for, never more than the region holds);
//! - the server allocates no more than a message declares (at most its size, itself bounded),
//!   which the fuzz target's runs check with libFuzzer's `-malloc_limit_mb`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use iommu_emulator::fuzz_support::Input;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::{ENGINE_RAM, ENGINE_RID, engine_core};
use crate::endpoint::engine::EndpointStats;
use crate::endpoint::server::EndpointFunction;
use crate::vfio::function::PciFunction;
use crate::vfio::server::{Connection, ConnectionEnd, Served, serve_connection};

/// The protocol's command numbers (`enum vfio_user_command`).
const VERSION: u16 = 1;
const DMA_MAP: u16 = 2;
const DMA_UNMAP: u16 = 3;
const DEVICE_GET_INFO: u16 = 4;
const GET_REGION_INFO: u16 = 5;
const GET_IRQ_INFO: u16 = 7;
const SET_IRQS: u16 = 8;
const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;
const DMA_WRITE: u16 = 12;
const DEVICE_RESET: u16 = 13;
/// Header flags.
const REPLY: u32 = 1;
const TYPE_MASK: u32 = 0xf;
const NO_REPLY: u32 = 1 << 4;
const ERROR: u32 = 1 << 5;
const HEADER: usize = 16;
const EINVAL: u32 = 22;
const ENOSYS: u32 = 38;
/// The most bytes a check sends (the socket holds them all before the server reads).
const MAX_STREAM: usize = 32 << 10;

/// The fixed part of a command's body the server needs, or `None` for a command it does not
/// know.
fn fixed_len(command: u16) -> Option<usize> {
    Some(match command {
        VERSION => 4,
        DMA_MAP | GET_REGION_INFO => 32,
        DMA_UNMAP => 24,
        DEVICE_GET_INFO | DEVICE_RESET => 0,
        GET_IRQ_INFO | REGION_READ | REGION_WRITE => 16,
        SET_IRQS => 20,
        _ => return None,
    })
}

/// One message to send, and the descriptor sent with it.
struct Message {
    bytes: Vec<u8>,
    fd: Option<Box<dyn AsRawFd>>,
}

fn le32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn le64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// A message from the input (see the module notes), with id `id`.
fn message(inp: &mut Input<'_>, id: u16, ram: &File) -> Option<Message> {
    let (kind, f) = (inp.u8()?, inp.u8()?);
    let command = match kind % 16 {
        0 => VERSION,
        1 => DMA_MAP,
        2 => DMA_UNMAP,
        3 => DEVICE_GET_INFO,
        4 => GET_REGION_INFO,
        5 => GET_IRQ_INFO,
        6 => SET_IRQS,
        7 | 12 | 13 => REGION_READ,
        8 | 14 | 15 => REGION_WRITE,
        9 => DEVICE_RESET,
        10 => DMA_WRITE,
        _ => inp.u16()?,
    };
    let flags = match f >> 4 {
        0 => u32::from(f & 1) | (u32::from(f >> 1 & 1) << 4) | (u32::from(f >> 2 & 1) << 5),
        1 => inp.u32()?,
        _ => 0,
    };
    let mut fd = None;
    let mut b = Vec::new();
    if kind & 0x10 != 0 {
        let n = usize::from(inp.u8()? % 48);
        b = inp.bytes(n)?;
    } else {
        body(&mut b, &mut fd, command, inp, ram)?;
    }
    let size = if kind & 0x60 == 0x60 {
        inp.u32()?
    } else {
        (HEADER + b.len()) as u32
    };
    let mut bytes = Vec::with_capacity(HEADER + b.len());
    bytes.extend_from_slice(&id.to_le_bytes());
    bytes.extend_from_slice(&command.to_le_bytes());
    le32(&mut bytes, size);
    le32(&mut bytes, flags);
    le32(&mut bytes, if flags & ERROR != 0 { EINVAL } else { 0 });
    bytes.extend_from_slice(&b);
    Some(Message { bytes, fd })
}

/// A well-formed body of `command`, its fields from the input.
fn body(
    b: &mut Vec<u8>,
    fd: &mut Option<Box<dyn AsRawFd>>,
    command: u16,
    inp: &mut Input<'_>,
    ram: &File,
) -> Option<()> {
    let sel = inp.u8()?;
    let small = |inp: &mut Input<'_>, n: u8| inp.u8().map(|v| v % n);
    match command {
        VERSION => {
            b.extend_from_slice(&[0, 0, 0, 0]);
            b.extend_from_slice(br#"{"capabilities":{"max_msg_fds":8}}"#);
            b.push(0);
        }
        DMA_MAP => {
            le32(b, 32);
            le32(b, if sel & 1 == 0 { 3 } else { inp.u32()? });
            let (offset, addr, size) = match sel >> 1 & 3 {
                0 => (0, 0, ENGINE_RAM),
                1 => (
                    u64::from(inp.u16()?) << 12,
                    u64::from(inp.u16()?) << 12,
                    u64::from(inp.u16()?) << 12,
                ),
                _ => (inp.u64()?, inp.u64()?, inp.u64()?),
            };
            le64(b, offset);
            le64(b, addr);
            le64(b, size);
            if sel & 8 == 0 {
                *fd = Some(Box::new(ram.try_clone().ok()?));
            }
        }
        DMA_UNMAP => {
            le32(b, 24);
            le32(b, if sel & 1 == 0 { 0 } else { inp.u32()? });
            let (addr, size) = match sel >> 1 & 1 {
                0 => (0, ENGINE_RAM),
                _ => (inp.u64()?, inp.u64()?),
            };
            le64(b, addr);
            le64(b, size);
        }
        DEVICE_GET_INFO => le32(b, 16),
        GET_REGION_INFO => {
            le32(b, 32);
            le32(b, 0);
            le32(b, u32::from(small(inp, 12)?));
            b.extend_from_slice(&[0; 20]);
        }
        GET_IRQ_INFO => {
            le32(b, 16);
            le32(b, 0);
            le32(b, u32::from(small(inp, 8)?));
            le32(b, 0);
        }
        SET_IRQS => {
            le32(b, 20);
            le32(b, inp.u32()?);
            le32(b, u32::from(small(inp, 6)?));
            le32(b, u32::from(small(inp, 3)?));
            le32(b, u32::from(small(inp, 3)?));
            if sel & 1 != 0 {
                *fd = Some(Box::new(EventFd::new(0).ok()?));
            }
        }
        REGION_READ | REGION_WRITE => {
            let region = match sel & 3 {
                0 => 0,
                1 => 7,
                _ => u32::from(small(inp, 10)?),
            };
            let offset = match sel >> 2 & 3 {
                0 => u64::from(small(inp, 0x80)? & !3),
                1 => u64::from(inp.u16()? % 0x1000),
                _ => inp.u64()?,
            };
            let count = match sel >> 4 & 3 {
                0 => u32::from(1u8 << small(inp, 4)?),
                1 => u32::from(inp.u16()?),
                _ => inp.u32()?,
            };
            le64(b, offset);
            le32(b, region);
            if command == REGION_READ {
                le32(b, count);
            } else {
                let n = small(inp, 9)?;
                let data = inp.bytes(usize::from(n))?;
                le32(
                    b,
                    if sel & 0x40 == 0 {
                        data.len() as u32
                    } else {
                        count
                    },
                );
                b.extend_from_slice(&data);
            }
        }
        _ => {}
    }
    Some(())
}

/// A message as the server must have read it from the stream.
struct Sent {
    id: u16,
    command: u16,
    flags: u32,
    body: Vec<u8>,
}

/// The stream's messages as the protocol frames them, and whether it ends at a message's end.
fn frame(stream: &[u8]) -> (Vec<Sent>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            return (out, true);
        }
        if rest.len() < HEADER {
            return (out, false);
        }
        let u32_at = |o: usize| u32::from_le_bytes(rest[o..o + 4].try_into().expect("4"));
        let size = u32_at(4) as usize;
        if size < HEADER || size > rest.len() {
            return (out, false);
        }
        out.push(Sent {
            id: u16::from_le_bytes([rest[0], rest[1]]),
            command: u16::from_le_bytes([rest[2], rest[3]]),
            flags: u32_at(8),
            body: rest[HEADER..size].to_vec(),
        });
        at += size;
    }
}

/// A reply read back: header fields and payload.
#[derive(Debug)]
struct Reply {
    id: u16,
    command: u16,
    flags: u32,
    error: u32,
    payload: Vec<u8>,
}

fn read_replies(mut s: UnixStream) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut h = [0u8; HEADER];
    while s.read_exact(&mut h).is_ok() {
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4"));
        let size = u32_at(4) as usize;
        assert!(size >= HEADER, "a reply of {size} bytes");
        let mut payload = vec![0u8; size - HEADER];
        s.read_exact(&mut payload).expect("a whole reply");
        out.push(Reply {
            id: u16::from_le_bytes([h[0], h[1]]),
            command: u16::from_le_bytes([h[2], h[3]]),
            flags: u32_at(8),
            error: u32_at(12),
            payload,
        });
    }
    out
}

/// Writes `msgs` into `client` without blocking (the socket holds them); returns the bytes
/// the server will read.
fn send_all(client: &UnixStream, msgs: &[Message]) -> Vec<u8> {
    client.set_nonblocking(true).expect("nonblocking");
    let mut sent = Vec::new();
    for m in msgs {
        let n = match &m.fd {
            Some(f) => client.send_with_fd(&m.bytes[..], f.as_raw_fd()).ok(),
            None => (&*client).write(&m.bytes).ok(),
        };
        let n = n.unwrap_or(0);
        sent.extend_from_slice(&m.bytes[..n]);
        if n < m.bytes.len() {
            break;
        }
    }
    client.set_nonblocking(false).expect("blocking");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    sent
}

/// What a stream did (for tests that a seed reaches what it was written for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfioSummary {
    /// Replies the server sent.
    pub replies: usize,
    /// Of which errors.
    pub errors: usize,
    /// Whether the connection ended as malformed.
    pub malformed: bool,
}

/// Runs `data` as a vfio-user message stream (see the module notes); panics only if an oracle
/// fails.
pub fn check_vfio_messages(data: &[u8]) -> VfioSummary {
    let ram = super::engine_ram();
    let stats = Arc::new(EndpointStats::default());
    let mut f = EndpointFunction::dma_engine(ENGINE_RID, engine_core(), stats);
    let regions = f.regions();
    let irqs = PciFunction::<crate::endpoint::server::DmaEngineDevice>::irqs();

    let mut inp = Input(data);
    let mut msgs = Vec::new();
    let mut len = 0;
    while msgs.len() < 64 {
        let Some(m) = message(&mut inp, msgs.len() as u16, &ram) else {
            break;
        };
        len += m.bytes.len();
        if len > MAX_STREAM {
            break;
        }
        msgs.push(m);
    }
    let (server, client) = UnixStream::pair().expect("a socket pair");
    let stream = send_all(&client, &msgs);
    drop(msgs);
    let reader = std::thread::spawn(move || read_replies(client));
    let conn = Connection::new(server.try_clone().expect("clone"));
    let end = serve_connection(
        &server,
        &conn,
        &mut Served {
            backend: &mut f,
            regions: &regions,
            irqs: &irqs,
        },
    );
    drop((conn, server));
    let replies = reader.join().expect("the reply reader");

    let (sent, whole) = frame(&stream);
    match &end {
        Ok(()) => assert!(whole, "the server read past a malformed message"),
        Err(ConnectionEnd::Malformed(_)) => assert!(!whole, "a whole stream ended as malformed"),
        Err(e) => panic!("the connection ended with {e}"),
    }
    let expected: Vec<&Sent> = sent
        .iter()
        .filter(|m| m.flags & TYPE_MASK != REPLY && m.flags & NO_REPLY == 0)
        .collect();
    assert_eq!(
        replies.len(),
        expected.len(),
        "{} replies to {} commands",
        replies.len(),
        expected.len()
    );
    for (m, r) in expected.iter().zip(&replies) {
        check_reply(m, r, &regions);
    }
    VfioSummary {
        replies: replies.len(),
        errors: replies.iter().filter(|r| r.flags & ERROR != 0).count(),
        malformed: end.is_err(),
    }
}

/// One reply against its command.
fn check_reply(m: &Sent, r: &Reply, regions: &[vfio_user::ServerRegion]) {
    assert_eq!((r.id, r.command), (m.id, m.command), "replies out of order");
    let failed = r.flags & ERROR != 0;
    assert_eq!(r.flags & !ERROR, REPLY, "{r:?}");
    assert_eq!(failed, r.error != 0, "{r:?}");
    match fixed_len(m.command) {
        None => assert_eq!(r.error, ENOSYS, "command {}", m.command),
        Some(n) if m.body.len() < n => assert_eq!(r.error, EINVAL, "command {}", m.command),
        _ => {}
    }
    if m.command == DEVICE_GET_INFO {
        assert!(!failed, "DEVICE_GET_INFO failed");
    }
    if failed {
        assert!(r.payload.is_empty(), "an error with a payload: {r:?}");
        return;
    }
    let u32_at = |o: usize| u32::from_le_bytes(m.body[o..o + 4].try_into().expect("4"));
    let len = match m.command {
        VERSION => r.payload.len().max(5),
        DMA_MAP | SET_IRQS | DEVICE_RESET => 0,
        DMA_UNMAP => 24,
        DEVICE_GET_INFO | GET_IRQ_INFO => 16,
        GET_REGION_INFO => 32,
        REGION_READ => {
            let (region, count) = (u32_at(8) as usize, u64::from(u32_at(12)));
            let size = regions[region].region_info.size;
            assert!(count <= size, "read {count} bytes of a region of {size}");
            16 + count as usize
        }
        REGION_WRITE => 16,
        c => panic!("command {c} succeeded"),
    };
    assert_eq!(r.payload.len(), len, "the reply to command {}", m.command);
}
