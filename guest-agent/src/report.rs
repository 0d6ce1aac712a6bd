//! The agent's machine-readable output: one line per result,
//! `AGENT <event> key=value key="value with spaces" ...`, on stdout (the guest's serial
//! console). The host-side tests parse the console log with [`parse_line`].

use std::fmt::Write as _;

/// The prefix of every report line.
pub const PREFIX: &str = "AGENT";

/// One report: an event name and its fields, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The event (`vfio-map`, `vfio-bench`, `error`, ...).
    pub event: String,
    /// `key=value` fields in the order printed.
    pub fields: Vec<(String, String)>,
}

impl Report {
    /// A report with no fields.
    pub fn new(event: &str) -> Self {
        Report {
            event: event.to_string(),
            fields: Vec::new(),
        }
    }

    /// Adds a field (builder style).
    pub fn field(mut self, key: &str, value: impl ToString) -> Self {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a hexadecimal field (`0x...`).
    pub fn hex(self, key: &str, value: u64) -> Self {
        self.field(key, format!("{value:#x}"))
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as an unsigned number (decimal or `0x` hexadecimal).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        parse_u64(self.get(key)?)
    }

    /// The value of `key` as a float.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.parse().ok()
    }

    /// The line, without a newline. Values holding whitespace, `"` or `=` or that are empty
    /// are quoted; a `"` inside a value becomes `'`.
    pub fn to_line(&self) -> String {
        let mut s = format!("{PREFIX} {}", self.event);
        for (k, v) in &self.fields {
            let needs_quotes =
                v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '"' || c == '=');
            if needs_quotes {
                let v: String = v
                    .chars()
                    .map(|c| match c {
                        '"' => '\'',
                        c if c.is_whitespace() => ' ',
                        c => c,
                    })
                    .collect();
                let _ = write!(s, " {k}=\"{v}\"");
            } else {
                let _ = write!(s, " {k}={v}");
            }
        }
        s
    }
}

/// A yes/no report value.
pub fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Addresses as a report value: comma-separated hexadecimal (`0x1000,0x2000`).
pub fn hex_list(v: &[u64]) -> String {
    v.iter()
        .map(|a| format!("{a:#x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses an unsigned number: decimal, or hexadecimal with a `0x` prefix.
pub fn parse_u64(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Parses one console line. The report may be preceded by other console output on the same
/// line (kernel messages interleave on a serial console); a carriage return is ignored.
/// Returns `None` for lines that hold no well-formed report.
pub fn parse_line(line: &str) -> Option<Report> {
    let line = line.trim_end_matches(['\r', '\n']);
    let start = line.find("AGENT ")?;
    let rest = &line[start + PREFIX.len() + 1..];
    let (event, mut rest) = match rest.split_once(' ') {
        Some((e, r)) => (e, r),
        None => (rest, ""),
    };
    if event.is_empty() {
        return None;
    }
    let mut report = Report::new(event);
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains(' ') {
            return None;
        }
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.split_once(' ') {
                Some((v, a)) => (v, a),
                None => (after, ""),
            }
        };
        report.fields.push((key.to_string(), value.to_string()));
        rest = after;
    }
    Some(report)
}

/// All reports in a console log, in order.
pub fn parse_log(log: &str) -> Vec<Report> {
    log.lines().filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses_a_map_line() {
        let r = Report::new("vfio-map")
            .field("bdf", "0000:00:03.0")
            .hex("iova", 0x10_0000)
            .hex("gpa", 0x1234_5000)
            .field("msg", "two words");
        let line = r.to_line();
        assert_eq!(
            line,
            "AGENT vfio-map bdf=0000:00:03.0 iova=0x100000 gpa=0x12345000 msg=\"two words\""
        );
        let p = parse_line(&line).unwrap();
        assert_eq!(p, r);
        assert_eq!(p.get_u64("iova"), Some(0x10_0000));
        assert_eq!(p.get("msg"), Some("two words"));
    }

    #[test]
    fn finds_report_after_console_noise() {
        let p = parse_line("[    1.234] foo AGENT ready kernel=6.12\r").unwrap();
        assert_eq!(p.event, "ready");
        assert_eq!(p.get("kernel"), Some("6.12"));
        assert!(parse_line("no report here").is_none());
        assert!(parse_line("AGENT x key_without_value").is_none());
        assert!(parse_line("AGENT x k=\"unterminated").is_none());
    }

    #[test]
    fn value_helpers() {
        assert_eq!((yes(true), yes(false)), ("yes", "no"));
        assert_eq!(hex_list(&[0x1000, 0, 0xfee0_0000]), "0x1000,0x0,0xfee00000");
        assert_eq!(hex_list(&[]), "");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x10"), Some(16));
        assert_eq!(parse_u64("10"), Some(10));
        assert_eq!(parse_u64("0xg"), None);
        assert_eq!(parse_u64("-1"), None);
    }

    proptest! {
        #[test]
        fn round_trip(event in "[a-z][a-z-]{0,10}",
                      fields in proptest::collection::vec(("[a-z_]{1,8}", "[ -~]{0,12}"), 0..6)) {
            let mut r = Report::new(&event);
            for (k, v) in &fields {
                r = r.field(k, v);
            }
            let p = parse_line(&r.to_line()).unwrap();
            prop_assert_eq!(p.event, r.event);
            prop_assert_eq!(p.fields.len(), r.fields.len());
            for ((pk, pv), (k, v)) in p.fields.iter().zip(&r.fields) {
                prop_assert_eq!(pk, k);
                prop_assert_eq!(pv, &v.replace('"', "'"));
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = parse_line(&s);
        }
    }
}
