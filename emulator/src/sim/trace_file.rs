//! The trace-file format `iommu-sim replay` reads and the daemon's `record` command writes:
//! JSON lines, one translation request per line, in nondecreasing time:
//!
//! ```text
//! {"t": 1200, "source": 32, "pasid": null, "addr": 1052672, "len": 4096, "access": "read"}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `t` | arrival time, in nanoseconds from the start of the trace |
//! | `source` | the PCI requester id (bus << 8 \| device << 3 \| function) |
//! | `pasid` | the PASID, or `null` for a request without one |
//! | `addr` | the input (IO virtual) address |
//! | `len` | bytes (at least 1) |
//! | `access` | `read`, `write`, `atomic` or `exec` |
//!
//! Blank lines and lines starting with `#` are skipped. A line that does not parse, a time
//! earlier than the line before's or beyond [`MAX_T`], a length beyond [`MAX_LEN`], or a range
//! that runs past the end of the address space is an error naming the line.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::request::AccessKind;

/// The latest time a record may carry, in nanoseconds (about 13 days): later times would
/// overflow the simulator's clock once turned into cycles.
pub const MAX_T: u64 = 1 << 50;
/// The longest request a record may carry (1 GiB): a replay maps every page a trace touches.
pub const MAX_LEN: u64 = 1 << 30;

/// One line of a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRecord {
    /// Arrival, in nanoseconds.
    pub t: u64,
    /// The requester id.
    pub source: u16,
    /// The PASID.
    pub pasid: Option<u32>,
    /// The input address.
    pub addr: u64,
    /// Bytes.
    pub len: u64,
    /// What the request does.
    pub access: Access,
}

/// A request's access, as the file spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An atomic operation (read and write).
    Atomic,
    /// An instruction fetch.
    Exec,
}

impl From<AccessKind> for Access {
    fn from(a: AccessKind) -> Self {
        match a {
            AccessKind::Read => Access::Read,
            AccessKind::Write => Access::Write,
            AccessKind::Atomic => Access::Atomic,
            AccessKind::Execute => Access::Exec,
        }
    }
}

impl From<Access> for AccessKind {
    fn from(a: Access) -> Self {
        match a {
            Access::Read => AccessKind::Read,
            Access::Write => AccessKind::Write,
            Access::Atomic => AccessKind::Atomic,
            Access::Exec => AccessKind::Execute,
        }
    }
}

/// Why a trace file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    /// Reading failed.
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a record.
    #[error("line {line}: {msg}")]
    Parse {
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

/// Reads every record of `input`.
pub fn read(input: impl BufRead) -> Result<Vec<TraceRecord>, TraceFileError> {
    let mut out: Vec<TraceRecord> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let parse = |msg: String| TraceFileError::Parse { line: i + 1, msg };
        let r: TraceRecord = serde_json::from_str(text).map_err(|e| parse(e.to_string()))?;
        if r.len == 0 {
            return Err(parse("len must be at least 1".into()));
        }
        if r.len > MAX_LEN {
            return Err(parse(format!("len {} is beyond {MAX_LEN}", r.len)));
        }
        if r.addr.checked_add(r.len - 1).is_none() {
            return Err(parse(format!(
                "{} bytes at {:#x} run past the end of the address space",
                r.len, r.addr
            )));
        }
        if r.t > MAX_T {
            return Err(parse(format!("time {} is beyond {MAX_T} ns", r.t)));
        }
        if let Some(prev) = out.last()
            && r.t < prev.t
        {
            return Err(parse(format!(
                "time {} is earlier than the line before's {}",
                r.t, prev.t
            )));
        }
        out.push(r);
    }
    Ok(out)
}

/// Writes one record as a line.
pub fn write(out: &mut impl Write, r: &TraceRecord) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_lines_name_themselves() {
        let recs = [
            TraceRecord {
                t: 0,
                source: 0x20,
                pasid: None,
                addr: 0x10_1000,
                len: 4096,
                access: Access::Read,
            },
            TraceRecord {
                t: 150,
                source: 0x20,
                pasid: Some(3),
                addr: 0x10_2000,
                len: 64,
                access: Access::Write,
            },
        ];
        let mut buf = b"# a comment\n\n".to_vec();
        for r in &recs {
            write(&mut buf, r).unwrap();
        }
        assert_eq!(read(&buf[..]).unwrap(), recs);
        let line = String::from_utf8(buf.clone()).unwrap();
        assert!(line.contains(r#""access":"write""#), "{line}");
        for (bad, want) in [
            ("{\"t\":1}\n", "line 1"),
            (
                "{\"t\":5,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":1,\"access\":\"read\"}\n\
                 {\"t\":4,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":1,\"access\":\"read\"}\n",
                "line 2: time 4",
            ),
            (
                "{\"t\":5,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":0,\"access\":\"read\"}\n",
                "at least 1",
            ),
            (
                "{\"t\":5,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":18446744073709551615,\"access\":\"read\"}\n",
                "is beyond 1073741824",
            ),
            (
                "{\"t\":5,\"source\":1,\"pasid\":null,\"addr\":18446744073709551615,\"len\":2,\"access\":\"read\"}\n",
                "past the end",
            ),
            (
                "{\"t\":18446744073709551615,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":1,\"access\":\"read\"}\n",
                "beyond 1125899906842624 ns",
            ),
            (
                "{\"t\":5,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":1,\"access\":\"poke\"}\n",
                "line 1",
            ),
            (
                "{\"t\":5,\"source\":1,\"pasid\":null,\"addr\":0,\"len\":1,\"access\":\"read\",\"x\":1}\n",
                "unknown field",
            ),
        ] {
            let e = read(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
