//! Generated workloads: the named scenarios an operator runs before a live event.
//!
//! Each generator turns a few parameters and the seed into a [`Workload`] — the same list of
//! timed operations a JSONL trace parses into — so a scenario is just a trace that did not have
//! to be written by hand. All randomness (join times, room choice) comes from a [`SimRng`] forked
//! from the run's seed.
//!
//! - `flash-crowd`: N members join over a window (default 1,000,000 over 60 s) into one room (or a
//!   few), then M messages of steady chat (default 1,000 at 10/s); `--link-failures K` kills K of
//!   the room's Links at evenly spaced points of the broadcast.
//! - `burst`: members join, steady chat, then a storm of messages in one second (queues, ring lag,
//!   counted gaps), then steady chat again.
//! - `link-failure`: steady chat while the room's busiest Link dies, and comes back later empty.
//! - `scale-out`: many rooms of Zipf-distributed sizes; a new Link joins mid-way. Even rooms fill
//!   before it joins, odd rooms after: the report shows how many placed rooms moved (pure ring vs
//!   bounded load) and what the new Link took.

use linkcast_core::placement::{BoundedLoad, HashRing, LinkId, Placement};

use crate::input::{Input, Op, Workload};
use crate::rng::SimRng;

/// The generated scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A million joins in a minute, then chat, with optional Link failures.
    FlashCrowd,
    /// Message storms.
    Burst,
    /// One Link dies mid-broadcast and comes back.
    LinkFailure,
    /// A Link joins a multi-room cluster.
    ScaleOut,
}

/// Scenario parameters (the CLI fills them; `defaults` gives each scenario's own).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Params {
    /// Members.
    pub members: u32,
    /// Rooms.
    pub rooms: u32,
    /// Messages of steady chat.
    pub messages: u32,
    /// Window over which members join (ms).
    pub join_window_ms: u64,
    /// Steady chat rate (messages per second).
    pub msg_rate: f64,
    /// Payload bytes per message.
    pub payload: u32,
    /// Link failures during the broadcast.
    pub link_failures: u32,
    /// Links up at start (to pick which ones fail / the id of the new one).
    pub links: u32,
    /// Links per room group (to pick which ones fail).
    pub group_size: usize,
    /// Storm size (burst).
    pub storm: u32,
    /// Storm payload bytes (burst).
    pub storm_payload: u32,
}

impl Params {
    /// The defaults of `scenario`.
    pub fn defaults(scenario: Scenario) -> Self {
        let base = Params {
            members: 1_000_000,
            rooms: 1,
            messages: 1_000,
            join_window_ms: 60_000,
            msg_rate: 10.0,
            payload: 256,
            link_failures: 0,
            links: 8,
            group_size: crate::config::DEFAULT_GROUP_SIZE,
            storm: 0,
            storm_payload: 1024,
        };
        match scenario {
            Scenario::FlashCrowd => base,
            Scenario::Burst => Params {
                members: 100_000,
                join_window_ms: 10_000,
                messages: 200,
                storm: 5_000,
                ..base
            },
            Scenario::LinkFailure => Params {
                members: 200_000,
                join_window_ms: 20_000,
                messages: 600,
                link_failures: 1,
                ..base
            },
            Scenario::ScaleOut => Params {
                members: 200_000,
                rooms: 1_000,
                join_window_ms: 30_000,
                messages: 2_000,
                msg_rate: 50.0,
                ..base
            },
        }
    }
}

/// Builds the workload of `scenario`.
pub fn generate(scenario: Scenario, p: &Params, seed: u64) -> Workload {
    let mut rng = SimRng::new(seed).fork(3);
    let mut w = Workload {
        rooms: (0..p.rooms.max(1)).map(|i| format!("room-{i}")).collect(),
        members: p.members,
        inputs: Vec::with_capacity(p.members as usize + p.messages as usize + p.storm as usize + 8),
    };
    let rooms = p.rooms.max(1);
    let window_us = p.join_window_ms * 1000;
    let zipf = (scenario == Scenario::ScaleOut && rooms > 1).then(|| zipf_cdf(rooms));
    for member in 0..p.members {
        let mut t_us = rng.below(window_us.max(1));
        let room = match &zipf {
            Some(cdf) => pick(cdf, rng.unit()),
            None => member % rooms,
        };
        if scenario == Scenario::ScaleOut {
            // Even rooms fill in the first half of the window, odd rooms in the second, after the
            // new Link joined: old rooms show what moves, new rooms what the new Link takes.
            t_us = t_us / 2 + if room % 2 == 1 { window_us / 2 + 1 } else { 0 };
        }
        w.inputs.push(Input { t_us, op: Op::Join { member, room } });
    }
    let chat_start = window_us + 1_000_000;
    let interval = (1_000_000.0 / p.msg_rate.max(0.001)) as u64;
    let mut t = chat_start;
    let mut publish = |w: &mut Workload, t: u64, i: u32, bytes: u32| {
        let room = match &zipf {
            // Busy rooms talk more: the same Zipf as their size.
            Some(cdf) => pick(cdf, rng.unit()),
            None => i % rooms,
        };
        w.inputs.push(Input { t_us: t, op: Op::Publish { room, bytes } });
    };
    match scenario {
        Scenario::Burst => {
            let half = p.messages / 2;
            for i in 0..half {
                publish(&mut w, t, i, p.payload);
                t += interval;
            }
            let storm_gap = (1_000_000 / u64::from(p.storm.max(1))).max(1);
            for i in 0..p.storm {
                publish(&mut w, t + u64::from(i) * storm_gap, i, p.storm_payload);
            }
            t += 1_000_000 + 2_000_000;
            for i in half..p.messages {
                publish(&mut w, t, i, p.payload);
                t += interval;
            }
        }
        _ => {
            for i in 0..p.messages {
                publish(&mut w, t, i, p.payload);
                t += interval;
            }
        }
    }
    let chat_us = u64::from(p.messages) * interval;
    let victims = failure_order(p.links, p.group_size, &w.rooms[0]);
    match scenario {
        Scenario::FlashCrowd | Scenario::LinkFailure => {
            let k = p.link_failures.min(victims.len() as u32);
            for i in 0..k {
                let at = chat_start + chat_us * u64::from(i + 1) / u64::from(k + 1);
                let link = victims[i as usize];
                w.inputs.push(Input { t_us: at, op: Op::LinkDown { link } });
                if scenario == Scenario::LinkFailure {
                    // Comes back (empty) two thirds into the chat: new joins and retries may use it.
                    let back = chat_start + chat_us * 2 / 3 + u64::from(i) * 1000;
                    w.inputs.push(Input { t_us: back.max(at + 1), op: Op::LinkUp { link } });
                }
            }
        }
        Scenario::ScaleOut => {
            w.inputs.push(Input { t_us: window_us / 2, op: Op::LinkUp { link: p.links } });
        }
        Scenario::Burst => {}
    }
    w.sort();
    w
}

/// The order in which Links of room `room` are failed: its placement group first (the Links
/// holding most of its members), then the rest of the ring.
fn failure_order(links: u32, group_size: usize, room: &str) -> Vec<u32> {
    let mut placement = BoundedLoad::new(HashRing::with_links((0..links).map(LinkId)), linkcast_core::placement::DEFAULT_LOAD_FACTOR);
    let mut order: Vec<u32> = placement.place(room, group_size, 1).iter().map(|l| l.0).collect();
    for LinkId(l) in placement.inner().locate(room, links as usize) {
        if !order.contains(&l) {
            order.push(l);
        }
    }
    order
}

/// Cumulative Zipf(1) weights over `n` ranks.
pub fn zipf_cdf(n: u32) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|rank| {
            acc += 1.0 / f64::from(rank);
            acc
        })
        .collect();
    for v in &mut cdf {
        *v /= acc;
    }
    cdf
}

/// The rank whose CDF bucket holds `u` in `[0, 1)`.
pub fn pick(cdf: &[f64], u: f64) -> u32 {
    (cdf.partition_point(|&c| c <= u) as u32).min(cdf.len() as u32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_crowd_has_the_requested_shape() {
        let p = Params { members: 1000, messages: 20, link_failures: 2, ..Params::defaults(Scenario::FlashCrowd) };
        let w = generate(Scenario::FlashCrowd, &p, 1);
        let joins = w.inputs.iter().filter(|i| matches!(i.op, Op::Join { .. })).count();
        let downs: Vec<u32> =
            w.inputs.iter().filter_map(|i| if let Op::LinkDown { link } = i.op { Some(link) } else { None }).collect();
        assert_eq!(joins, 1000);
        assert_eq!(w.publishes(), 20);
        assert_eq!(downs.len(), 2);
        assert_ne!(downs[0], downs[1]);
        assert!(w.inputs.windows(2).all(|p| p[0].t_us <= p[1].t_us));
        assert!(w.inputs.iter().filter(|i| matches!(i.op, Op::Join { .. })).all(|i| i.t_us < 60_000_000));
    }

    #[test]
    fn zipf_pick_covers_ranks() {
        let cdf = zipf_cdf(4);
        assert_eq!(pick(&cdf, 0.0), 0);
        assert_eq!(pick(&cdf, 0.999_999), 3);
        assert!((cdf[3] - 1.0).abs() < 1e-12);
    }
}
