//! The simulator's input: a time-ordered list of operations (join, leave, publish, link_down,
//! link_up), either parsed from a JSONL trace file or produced by a scenario generator.
//!
//! Both sources end as the same [`Workload`], so the event loop has exactly one input path. Room
//! and member ids of a trace (JSON numbers or strings) are mapped to dense indices in order of
//! first appearance; the simulator's per-member state is a `Vec` indexed by them.
//!
//! Trace format (one JSON object per line; blank lines and lines starting with `#` are skipped;
//! `t_ms` may be fractional and lines may come in any order — they are stably sorted by time):
//!
//! ```text
//! {"t_ms": 0,    "op": "join",      "member": "alice", "room": "lobby"}
//! {"t_ms": 10,   "op": "publish",   "room": "lobby", "bytes": 200}
//! {"t_ms": 20,   "op": "leave",     "member": "alice"}
//! {"t_ms": 30,   "op": "link_down", "link": 1}
//! {"t_ms": 9000, "op": "link_up",   "link": 1}
//! ```

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use linkcast_core::frame::is_valid_room;

/// One input operation. Ids are dense indices into [`Workload`]'s tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A member joins a room (leaving its previous room, if any).
    Join {
        /// Member index.
        member: u32,
        /// Room index.
        room: u32,
    },
    /// A member leaves its room and disconnects.
    Leave {
        /// Member index.
        member: u32,
    },
    /// The business backend publishes `bytes` of payload to a room.
    Publish {
        /// Room index.
        room: u32,
        /// Payload size.
        bytes: u32,
    },
    /// A Link dies (crash: its connections drop, frames in flight to it are lost).
    LinkDown {
        /// Link id.
        link: u32,
    },
    /// A Link (re)joins the cluster, empty.
    LinkUp {
        /// Link id.
        link: u32,
    },
}

/// An operation at a virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Input {
    /// Virtual time, microseconds.
    pub t_us: u64,
    /// What happens.
    pub op: Op,
}

/// Everything a run replays.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// Inputs sorted by time (stable: equal times keep their order).
    pub inputs: Vec<Input>,
    /// Room names by index.
    pub rooms: Vec<String>,
    /// Number of distinct members.
    pub members: u32,
}

impl Workload {
    /// Sorts inputs by time, keeping the order of equal times.
    pub fn sort(&mut self) {
        self.inputs.sort_by_key(|input| input.t_us);
    }

    /// Number of publish operations.
    pub fn publishes(&self) -> u64 {
        self.inputs.iter().filter(|i| matches!(i.op, Op::Publish { .. })).count() as u64
    }

    /// Highest Link id mentioned by a link_down/link_up, if any.
    pub fn max_link_id(&self) -> Option<u32> {
        self.inputs
            .iter()
            .filter_map(|i| match i.op {
                Op::LinkDown { link } | Op::LinkUp { link } => Some(link),
                _ => None,
            })
            .max()
    }
}

/// Why a trace could not be read.
#[derive(Debug)]
pub enum TraceError {
    /// The file could not be read.
    Io(std::io::Error),
    /// A line is not a valid trace event.
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io(e) => write!(f, "cannot read trace: {e}"),
            TraceError::Line { line, reason } => write!(f, "trace line {line}: {reason}"),
        }
    }
}

impl std::error::Error for TraceError {}

/// A member or room id as written in a trace: a number or a string.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(untagged)]
enum Id {
    Num(u64),
    Text(String),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::Num(n) => n.to_string(),
            Id::Text(s) => s,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    t_ms: f64,
    op: String,
    member: Option<Id>,
    room: Option<Id>,
    bytes: Option<u32>,
    link: Option<u32>,
}

/// Parses a JSONL trace (see the module docs for the format).
pub fn parse_trace(text: &str) -> Result<Workload, TraceError> {
    let mut workload = Workload::default();
    let mut rooms: HashMap<String, u32> = HashMap::new();
    let mut members: HashMap<Id, u32> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let err = |reason: String| TraceError::Line { line: line_no, reason };
        let line: Line = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        if !(line.t_ms.is_finite() && line.t_ms >= 0.0) {
            return Err(err("t_ms must be a finite, non-negative number".into()));
        }
        let t_us = (line.t_ms * 1000.0).round() as u64;
        let mut room_index = |id: Option<Id>| -> Result<u32, TraceError> {
            let name = id.ok_or_else(|| err("missing \"room\"".into()))?.into_string();
            if !is_valid_room(&name) {
                return Err(err(format!("invalid room name {name:?}")));
            }
            let next = workload.rooms.len() as u32;
            Ok(*rooms.entry(name.clone()).or_insert_with(|| {
                workload.rooms.push(name);
                next
            }))
        };
        let mut member_index = |id: Option<Id>| -> Result<u32, TraceError> {
            let id = id.ok_or_else(|| err("missing \"member\"".into()))?;
            let next = members.len() as u32;
            Ok(*members.entry(id).or_insert(next))
        };
        let op = match line.op.as_str() {
            "join" => Op::Join { member: member_index(line.member)?, room: room_index(line.room)? },
            "leave" => Op::Leave { member: member_index(line.member)? },
            "publish" => Op::Publish { room: room_index(line.room)?, bytes: line.bytes.unwrap_or(64) },
            "link_down" => Op::LinkDown { link: line.link.ok_or_else(|| err("missing \"link\"".into()))? },
            "link_up" => Op::LinkUp { link: line.link.ok_or_else(|| err("missing \"link\"".into()))? },
            other => return Err(err(format!("unknown op {other:?}"))),
        };
        workload.inputs.push(Input { t_us, op });
    }
    workload.members = members.len() as u32;
    workload.sort();
    Ok(workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op_and_maps_ids_densely() {
        let text = r#"
            # a comment
            {"t_ms": 5, "op": "publish", "room": "lobby", "bytes": 10}
            {"t_ms": 0, "op": "join", "member": "alice", "room": "lobby"}
            {"t_ms": 0, "op": "join", "member": 7, "room": 3}
            {"t_ms": 6.5, "op": "leave", "member": 7}
            {"t_ms": 7, "op": "link_down", "link": 1}
            {"t_ms": 8, "op": "link_up", "link": 1}
        "#;
        let w = parse_trace(text).expect("valid trace");
        assert_eq!(w.rooms, vec!["lobby".to_string(), "3".to_string()]);
        assert_eq!(w.members, 2);
        assert_eq!(w.inputs[0], Input { t_us: 0, op: Op::Join { member: 0, room: 0 } });
        assert_eq!(w.inputs[1], Input { t_us: 0, op: Op::Join { member: 1, room: 1 } });
        assert_eq!(w.inputs[2].op, Op::Publish { room: 0, bytes: 10 });
        assert_eq!(w.inputs[3], Input { t_us: 6500, op: Op::Leave { member: 1 } });
        assert_eq!(w.max_link_id(), Some(1));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let err = parse_trace("{\"t_ms\":1,\"op\":\"join\",\"member\":1,\"room\":\"a b\"}").unwrap_err();
        assert!(matches!(err, TraceError::Line { line: 1, .. }), "{err}");
        let err = parse_trace("\n{\"t_ms\":1,\"op\":\"fly\"}").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse_trace("{\"t_ms\":-1,\"op\":\"link_up\",\"link\":0}").is_err());
    }
}
