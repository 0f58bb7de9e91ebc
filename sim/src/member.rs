//! One member (a client connection in one room), stored compactly: a million of them are a
//! `Vec<Member>` of about 64 MB, with no per-member queue, task or history.
//!
//! What a member holds is exactly what a real client remembers plus the counters the verdict
//! needs: its room, Link and group (where it is), `last_seq` (the `since` it sends on re-join),
//! `live_from` (the first seq its current session gets live; fixed at join), and how many seqs
//! it was delivered, lost (counted gaps) and expected over its finished memberships. Live
//! deliveries are not added here one by one: a session's share is computed when it ends, from
//! its group (see `group.rs`).

/// Room index of a member in no room.
pub const NO_ROOM: u32 = u32::MAX;

/// Where a member is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MemberState {
    /// In no room.
    Absent,
    /// Admitted by a Link, handshake in flight (`Connected` event pending).
    Connecting,
    /// Joined: in a group, receiving live frames.
    Connected,
    /// Between attempts (backoff after a disconnect or a refusal).
    Backoff,
    /// Out of attempts; stays disconnected.
    GaveUp,
}

/// One member.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// Room index or [`NO_ROOM`].
    pub room: u32,
    /// Link id while connecting or connected.
    pub link: u32,
    /// Group slot while connected.
    pub group: u32,
    /// Bumped at every state change that makes pending events for it stale.
    pub epoch: u32,
    /// Connect attempts since the last success.
    pub attempts: u32,
    /// Seqs received (live + replay) over all memberships so far.
    pub delivered: u32,
    /// Seqs lost with an explicit gap (ring lag, history window).
    pub lost: u32,
    /// Seqs expected over finished memberships.
    pub expected: u32,
    /// Life-cycle state.
    pub state: MemberState,
    /// It has joined once in this membership (so it has a `since` to send).
    pub has_position: bool,
    /// Joined a room successfully at least once in the run.
    pub ever_joined: bool,
    /// Disconnected by a failure and not yet back: 1 + index of that failure's storm (0 = no).
    pub storm: u16,
    /// The last seq received or accounted as lost.
    pub last_seq: u64,
    /// First seq of the current session's live stream.
    pub live_from: u64,
    /// First seq the current membership expects (the room's next seq at its first join).
    pub join_from: u64,
}

impl Default for Member {
    fn default() -> Self {
        Member {
            room: NO_ROOM,
            link: 0,
            group: 0,
            epoch: 0,
            attempts: 0,
            delivered: 0,
            lost: 0,
            expected: 0,
            state: MemberState::Absent,
            has_position: false,
            ever_joined: false,
            storm: 0,
            last_seq: 0,
            live_from: 0,
            join_from: 0,
        }
    }
}
