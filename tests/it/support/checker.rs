//! THE invariant of docs/protocol.md, checked on every message a [`super::member::Member`]
//! receives: per room, seqs strictly increasing by one; every jump preceded by a `gap` covering
//! exactly the missing range, or a `reset` (seqs restart in the new epoch); nothing before
//! `joined` on a live-only join; `joined.last_seq` = what was replayed; after `left` nothing
//! until the next join. `no_silent_loss_link::the_checker_rejects_every_silent_jump_...` tests
//! the checker itself, so a green test means what it says.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;


/// One thing a client received (or the end of its connection).
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    /// A room message.
    Msg { room: String, seq: u64, data: Value },
    /// `{"op":"gap"}`.
    Gap { room: String, first: u64, last: u64, resume: u64 },
    /// `{"op":"reset"}`.
    Reset { room: String, epoch: String, last_seq: u64 },
    /// `{"op":"joined"}`.
    Joined { room: String, epoch: String, last_seq: u64 },
    /// `{"op":"left"}`.
    Left { room: String },
    /// `{"op":"published"}` (the whole JSON).
    Published(Value),
    /// `{"op":"error"}` (the whole JSON).
    Error(Value),
    /// `{"op":"pong"}`.
    Pong,
    /// A close frame.
    Close(u16, String),
    /// The connection ended without a close frame.
    End,
}

impl Ev {
    /// A one-line summary (room messages without their payload).
    pub fn short(&self) -> String {
        match self {
            Ev::Msg { room, seq, .. } => format!("msg {room}#{seq}"),
            Ev::Gap { room, first, last, resume } => format!("gap {room} {first}..={last} resume {resume}"),
            Ev::Reset { room, epoch, last_seq } => format!("reset {room} epoch {epoch} last_seq {last_seq}"),
            Ev::Joined { room, epoch, last_seq } => format!("joined {room} epoch {epoch} last_seq {last_seq}"),
            Ev::Left { room } => format!("left {room}"),
            Ev::Published(v) => format!("published {v}"),
            Ev::Error(v) => format!("error {v}"),
            Ev::Pong => "pong".into(),
            Ev::Close(code, reason) => format!("close {code} {reason:?}"),
            Ev::End => "end".into(),
        }
    }

    /// The room message's seq, if this is one of `room`.
    pub fn seq_in(&self, room: &str) -> Option<u64> {
        match self {
            Ev::Msg { room: r, seq, .. } if r == room => Some(*seq),
            _ => None,
        }
    }
}

/// True for 16 lowercase hex digits (the JSON form of an epoch).
pub fn is_epoch(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn field_u64(value: &Value, name: &str) -> Result<u64, String> {
    value[name].as_u64().ok_or_else(|| format!("`{name}` missing or not a number in {value}"))
}

fn field_str(value: &Value, name: &str) -> Result<String, String> {
    value[name].as_str().map(str::to_owned).ok_or_else(|| format!("`{name}` missing or not a string in {value}"))
}

/// Parses one server→client JSON message.
pub fn parse(value: &Value) -> Result<Ev, String> {
    let room = || field_str(value, "room");
    match value.get("op").and_then(Value::as_str) {
        None => Ok(Ev::Msg { room: room()?, seq: field_u64(value, "seq")?, data: value["data"].clone() }),
        Some("gap") => Ok(Ev::Gap {
            room: room()?,
            first: field_u64(value, "first_lost")?,
            last: field_u64(value, "last_lost")?,
            resume: field_u64(value, "resume_from")?,
        }),
        Some("reset") => Ok(Ev::Reset { room: room()?, epoch: field_str(value, "epoch")?, last_seq: field_u64(value, "last_seq")? }),
        Some("joined") => Ok(Ev::Joined { room: room()?, epoch: field_str(value, "epoch")?, last_seq: field_u64(value, "last_seq")? }),
        Some("left") => Ok(Ev::Left { room: room()? }),
        Some("published") => Ok(Ev::Published(value.clone())),
        Some("error") => Ok(Ev::Error(value.clone())),
        Some("pong") => Ok(Ev::Pong),
        Some(other) => Err(format!("unknown op {other:?} in {value}")),
    }
}

/// A request the client sent that the server has not answered yet.
#[derive(Clone, Debug)]
enum Pending {
    Join { since: Option<u64>, epoch: Option<String> },
    Leave,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Not in the room: no message may arrive.
    Out,
    /// A join is being answered. `live_only`: no `since` (and no reset yet), so nothing may
    /// arrive before `joined`.
    Joining { live_only: bool },
    /// Joined: live messages.
    In,
}

/// The invariant for one (client, room).
#[derive(Debug)]
pub struct Stream {
    room: String,
    /// The epoch the client's position belongs to (once known).
    epoch: Option<String>,
    /// The last seq accounted for (received or declared lost) in `epoch`.
    pos: u64,
    phase: Phase,
    /// Requests in flight, oldest first; the front join (if the phase is `Joining`) is the one
    /// being answered.
    pending: VecDeque<Pending>,
}

impl Stream {
    /// A client that has not joined `room`.
    pub fn new(room: &str) -> Stream {
        Stream { room: room.to_owned(), epoch: None, pos: 0, phase: Phase::Out, pending: VecDeque::new() }
    }

    /// The epoch of the client's position, once known.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The last seq received or declared lost in the current epoch.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn start_front(&mut self) {
        if let Some(Pending::Join { since, epoch }) = self.pending.front() {
            if let Some(epoch) = epoch {
                self.epoch = Some(epoch.clone());
            }
            self.pos = since.unwrap_or(0);
            self.phase = Phase::Joining { live_only: since.is_none() };
        }
    }

    /// The client sent a join.
    pub fn sent_join(&mut self, since: Option<u64>, epoch: Option<String>) {
        self.pending.push_back(Pending::Join { since, epoch });
        if self.pending.len() == 1 && self.phase == Phase::Out {
            self.start_front();
        }
    }

    /// The client sent a leave.
    pub fn sent_leave(&mut self) {
        self.pending.push_back(Pending::Leave);
    }

    /// Feeds one received event of this room; `Err` says what broke the invariant.
    pub fn feed(&mut self, ev: &Ev) -> Result<(), String> {
        match ev {
            Ev::Msg { seq, .. } => {
                match self.phase {
                    Phase::Out => return Err(format!("message seq {seq} while not in the room")),
                    Phase::Joining { live_only: true } => {
                        return Err(format!("message seq {seq} before `joined` of a join without `since`"))
                    }
                    _ => {}
                }
                if *seq != self.pos + 1 {
                    return Err(format!(
                        "seq {seq} after {} with no gap/reset covering it (epoch {:?})",
                        self.pos, self.epoch
                    ));
                }
                self.pos = *seq;
            }
            Ev::Gap { first, last, resume, .. } => {
                if matches!(self.phase, Phase::Out | Phase::Joining { live_only: true }) {
                    return Err(format!("gap while {:?}", self.phase));
                }
                if *first != self.pos + 1 || last < first || *resume != last + 1 {
                    return Err(format!(
                        "gap {first}..={last} resume {resume} does not continue from {} (must be first_lost = {}, last_lost >= first_lost, resume_from = last_lost + 1)",
                        self.pos,
                        self.pos + 1
                    ));
                }
                self.pos = *last;
            }
            Ev::Reset { epoch, .. } => {
                if self.phase == Phase::Out {
                    return Err(format!("reset to {epoch} while not in the room"));
                }
                if !is_epoch(epoch) {
                    return Err(format!("reset epoch {epoch:?} is not 16 lowercase hex digits"));
                }
                if self.epoch.as_deref() == Some(epoch.as_str()) {
                    return Err(format!("reset to the epoch the client already has ({epoch})"));
                }
                self.epoch = Some(epoch.clone());
                self.pos = 0;
                if let Phase::Joining { .. } = self.phase {
                    self.phase = Phase::Joining { live_only: false };
                }
            }
            Ev::Joined { epoch, last_seq, .. } => {
                let Phase::Joining { live_only } = self.phase else {
                    return Err(format!("joined while {:?} (no join being answered)", self.phase));
                };
                if !is_epoch(epoch) {
                    return Err(format!("joined epoch {epoch:?} is not 16 lowercase hex digits"));
                }
                if let Some(known) = &self.epoch {
                    if known != epoch {
                        return Err(format!("joined in epoch {epoch} but the client's position is in {known} and no reset came"));
                    }
                }
                if live_only {
                    self.pos = *last_seq;
                } else if *last_seq != self.pos {
                    return Err(format!("joined last_seq {last_seq} but the replay reached {}", self.pos));
                }
                self.epoch = Some(epoch.clone());
                self.pending.pop_front();
                self.phase = Phase::In;
            }
            Ev::Left { .. } => {
                let Some(at) = self.pending.iter().position(|p| matches!(p, Pending::Leave)) else {
                    return Err("left without a pending leave".into());
                };
                self.pending.drain(..=at);
                self.phase = Phase::Out;
                self.start_front();
            }
            Ev::Error(value) => {
                // A refused join or leave (publish errors carry the publish's `id`, not this).
                match self.pending.pop_front() {
                    Some(_) => {
                        self.phase = Phase::Out;
                        self.start_front();
                    }
                    None => return Err(format!("error for the room with nothing pending: {value}")),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The invariant for one client over all its rooms, plus a log of what it received.
#[derive(Debug, Default)]
pub struct Checker {
    rooms: HashMap<String, Stream>,
    recent: VecDeque<String>,
}

impl Checker {
    fn stream(&mut self, room: &str) -> &mut Stream {
        self.rooms.entry(room.to_owned()).or_insert_with(|| Stream::new(room))
    }

    /// The room's stream state (if the client ever used the room).
    pub fn room(&self, room: &str) -> Option<&Stream> {
        self.rooms.get(room)
    }

    /// Records a client→server op (joins and leaves change what may be received).
    pub fn sent(&mut self, op: &Value) {
        let room = op["room"].as_str().unwrap_or("").to_owned();
        match op["op"].as_str() {
            Some("join") => {
                let epoch = op["epoch"].as_str().map(str::to_owned);
                self.stream(&room).sent_join(op["since"].as_u64(), epoch);
            }
            Some("leave") => self.stream(&room).sent_leave(),
            _ => {}
        }
        self.note(format!("sent {op}"));
    }

    fn note(&mut self, line: String) {
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// Checks one received JSON message; `Err` names the violation and shows recent history.
    pub fn received(&mut self, value: &Value) -> Result<Ev, String> {
        let ev = parse(value);
        self.note(match &ev {
            Ok(ev) => format!("got {}", ev.short()),
            Err(_) => format!("got {value}"),
        });
        let ev = ev.map_err(|e| self.explain(&e))?;
        let room = match &ev {
            Ev::Msg { room, .. } | Ev::Gap { room, .. } | Ev::Reset { room, .. } | Ev::Joined { room, .. } | Ev::Left { room } => {
                Some(room.clone())
            }
            // Publish answers carry the publish `id`; room-level refusals (join/leave) do not.
            Ev::Error(v) if v.get("id").is_none() => v["room"].as_str().map(str::to_owned),
            _ => None,
        };
        if let Some(room) = room {
            if let Err(e) = self.stream(&room).feed(&ev) {
                return Err(self.explain(&format!("room {room}: {e}")));
            }
        }
        Ok(ev)
    }

    fn explain(&self, what: &str) -> String {
        let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
        format!("NO-SILENT-LOSS VIOLATION: {what}\nrecent traffic (oldest first):\n  {}", recent.join("\n  "))
    }
}

