//! The hub's two tasks around a Redis room store ([`crate::store`]), when `[store] redis` is set.
//!
//! - **The store worker** ([`run_worker`]) is the hub task's only caller of the store. It takes
//!   [`StoreCommand`]s in order and answers with [`StoreEvent`]s in the same order: consecutive
//!   publishes are sent as **one pipeline** (up to [`MAX_BATCH`] scripts, so throughput does not
//!   pay a round trip per message); consecutive acquisitions likewise go as one pipeline;
//!   releases and TTL refreshes run on their own between batches. One call at a time: a room's publishes reach Redis in the
//!   order the hub task sent them, and a release queued after a room's publishes runs after them.
//!   Every call has a deadline ([`STORE_TIMEOUT`]); a batch that failed or timed out is answered
//!   `None` per publish (its outcome is unknown: the publisher gets 503, and the hub reloads the
//!   room from the store before serving it again).
//! - **The membership task** ([`run_membership`]) writes this hub's heartbeat key every
//!   `store.heartbeat_ms` and reads every configured hub's key. A hub is live while its key is
//!   there; one missing in two polls in a row is dead (one miss is forgiven, so a Redis restart
//!   that wiped the keys does not move every room). For its first `store.hub_ttl_ms` a hub takes
//!   every configured hub as live (a key it has not seen yet may still come). When the live set changes it takes a new
//!   version from the store's shared counter and tells the hub task ([`StoreEvent::View`]),
//!   which steps down from rooms it no longer owns and pushes the owner map to its Links.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{Acquired, PublishCmd, PublishOutcome, RedisStore, StoreError};
use linkcast_core::hub_directory::HubId;
use linkcast_core::placement::LinkId;
use linkcast_core::room_table::{PublishAck, PublishError};

/// Most publishes in one pipeline.
pub(crate) const MAX_BATCH: usize = 1024;

/// Longest wait for one store call before its outcome is taken as unknown.
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who waits for a publish's outcome.
#[derive(Debug)]
pub(crate) enum PublishReply {
    /// An HTTP publish.
    Http(oneshot::Sender<Result<PublishAck, PublishError>>),
    /// A client publish relayed by a Link (answered with `PublishAck` / `Error` to `request`).
    Link { link: LinkId, generation: u64, request: u64, room: String },
}

/// Work for the store worker, served in order.
pub(crate) enum StoreCommand {
    /// Take (or keep) `room`'s lease and read its state.
    Acquire { room: String, live: Vec<u32>, candidate_epoch: u64 },
    /// Sequence one publish (batched with the publishes queued after it).
    Publish { cmd: PublishCmd, reply: PublishReply },
    /// Give up leases: (room, fence).
    Release { rooms: Vec<(String, u64)> },
    /// Refresh the TTL of rooms that still have members but no publishes.
    Touch { rooms: Vec<String> },
}

/// Answers from the store tasks to the hub task.
pub(crate) enum StoreEvent {
    /// The answer to an [`StoreCommand::Acquire`].
    Acquired { room: String, result: Result<Acquired, String> },
    /// The outcomes of one pipeline, in the order sent; `None`: unknown (the store failed).
    Published(Vec<(PublishCmd, PublishReply, Option<PublishOutcome>)>),
    /// The live hubs changed: the new owner map.
    View { version: u64, live: Vec<HubId> },
}

/// Runs the store worker until the hub task drops its command sender or `shutdown`.
pub(crate) async fn run_worker(
    store: RedisStore,
    mut commands: mpsc::UnboundedReceiver<StoreCommand>,
    events: mpsc::UnboundedSender<StoreEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next: Option<StoreCommand> = None;
    loop {
        let command = match next.take() {
            Some(command) => command,
            None => tokio::select! {
                _ = shutdown.changed() => return,
                command = commands.recv() => match command {
                    Some(command) => command,
                    None => return,
                },
            },
        };
        let event = match command {
            StoreCommand::Publish { cmd, reply } => {
                let mut batch = vec![(cmd, reply)];
                take_batch(&mut commands, &mut next, &mut batch, |command| match command {
                    StoreCommand::Publish { cmd, reply } => Taken::Item((cmd, reply)),
                    other => Taken::Refused(other),
                });
                let (cmds, replies): (Vec<PublishCmd>, Vec<PublishReply>) = batch.into_iter().unzip();
                let outcomes: Vec<Option<PublishOutcome>> = match deadline(store.publish_batch(&cmds)).await {
                    Ok(outcomes) if outcomes.len() == cmds.len() => outcomes.into_iter().map(Some).collect(),
                    Ok(outcomes) => {
                        tracing::error!(sent = cmds.len(), answered = outcomes.len(), "room store answered a batch partly; outcomes unknown");
                        cmds.iter().map(|_| None).collect()
                    }
                    Err(error) => {
                        tracing::warn!(%error, publishes = cmds.len(), "room store batch failed");
                        metrics::counter!("linkcast_store_errors_total", "op" => "publish").increment(1);
                        cmds.iter().map(|_| None).collect()
                    }
                };
                let results = cmds.into_iter().zip(replies).zip(outcomes).map(|((c, r), o)| (c, r, o)).collect();
                StoreEvent::Published(results)
            }
            StoreCommand::Acquire { room, live, candidate_epoch } => {
                // Consecutive acquisitions under the same view go in one pipeline (a take-over
                // of many rooms pays a round trip per batch).
                let mut rooms = vec![(room, candidate_epoch)];
                take_batch(&mut commands, &mut next, &mut rooms, |command| match command {
                    StoreCommand::Acquire { room, live: same, candidate_epoch } if same == live => Taken::Item((room, candidate_epoch)),
                    other => Taken::Refused(other),
                });
                let results: Vec<Result<Acquired, String>> = match deadline(store.acquire_batch(&rooms, &live)).await {
                    Ok(answers) if answers.len() == rooms.len() => answers.into_iter().map(|a| a.map_err(|e| e.to_string())).collect(),
                    Ok(_) => rooms.iter().map(|_| Err("room store answered an acquire batch partly".to_owned())).collect(),
                    Err(error) => rooms.iter().map(|_| Err(error.clone())).collect(),
                };
                if results.iter().any(Result::is_err) {
                    metrics::counter!("linkcast_store_errors_total", "op" => "acquire").increment(1);
                }
                let mut sent = true;
                for ((room, _), result) in rooms.into_iter().zip(results) {
                    sent &= events.send(StoreEvent::Acquired { room, result }).is_ok();
                }
                if !sent {
                    return;
                }
                continue;
            }
            StoreCommand::Release { rooms } => {
                if let Err(error) = deadline(store.release(&rooms)).await {
                    // An unreleased lease only delays the next owner until this hub's heartbeat
                    // expires (the lease is taken from a hub that is not live).
                    tracing::warn!(%error, rooms = rooms.len(), "could not release room leases");
                    metrics::counter!("linkcast_store_errors_total", "op" => "release").increment(1);
                }
                continue;
            }
            StoreCommand::Touch { rooms } => {
                if let Err(error) = deadline(store.touch(&rooms)).await {
                    tracing::warn!(%error, rooms = rooms.len(), "could not refresh room TTLs");
                    metrics::counter!("linkcast_store_errors_total", "op" => "touch").increment(1);
                }
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// What [`take_batch`]'s caller makes of the next queued command. (Lives for one call on the
/// stack: the size difference between its variants costs nothing.)
#[allow(clippy::large_enum_variant)]
enum Taken<T> {
    /// It joins the batch as this item.
    Item(T),
    /// It does not fit the batch: it goes next, on its own.
    Refused(StoreCommand),
}

/// Adds to `batch` the commands queued right behind its first one while `take` accepts them, up
/// to [`MAX_BATCH`]; the first one refused waits in `next` for the following round.
fn take_batch<T>(
    commands: &mut mpsc::UnboundedReceiver<StoreCommand>,
    next: &mut Option<StoreCommand>,
    batch: &mut Vec<T>,
    take: impl Fn(StoreCommand) -> Taken<T>,
) {
    while batch.len() < MAX_BATCH {
        let Ok(command) = commands.try_recv() else { return };
        match take(command) {
            Taken::Item(item) => batch.push(item),
            Taken::Refused(other) => {
                *next = Some(other);
                return;
            }
        }
    }
}

/// A store call with [`STORE_TIMEOUT`].
async fn deadline<T>(call: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, String> {
    match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {STORE_TIMEOUT:?}")),
    }
}

/// The live set from one poll: hubs whose key was seen, plus hubs live before whose key was
/// missed only once, plus this hub.
pub(crate) fn live_set(hubs: &[u32], me: u32, seen: &[u32], before: Option<&[HubId]>, misses: &mut HashMap<u32, u32>) -> Vec<HubId> {
    let mut live = Vec::new();
    for &hub in hubs {
        let missed = if hub == me || seen.contains(&hub) {
            misses.remove(&hub);
            false
        } else {
            *misses.entry(hub).or_insert(0) += 1;
            true
        };
        let was_live = before.is_some_and(|b| b.contains(&HubId(hub)));
        if !missed || (was_live && misses.get(&hub).copied().unwrap_or(0) < 2) {
            live.push(HubId(hub));
        }
    }
    live
}

/// Runs the membership task (heartbeat + live set) until `shutdown`.
///
/// A hub starts believing every configured hub is live, and declares none dead for `grace`
/// (`store.hub_ttl_ms`): a heartbeat it has not seen yet may be younger than that. So a hub
/// starting next to others never takes their rooms for a moment, and its first view (version
/// 0, which no Link takes over a real one) misleads no Link.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_membership(
    store: RedisStore,
    hubs: Vec<u32>,
    me: u32,
    period: Duration,
    grace: Duration,
    first: Vec<HubId>,
    events: mpsc::UnboundedSender<StoreEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace_until = tokio::time::Instant::now() + grace;
    let mut current = first;
    let mut misses = HashMap::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = deadline(store.heartbeat()).await {
            // Without Redis nobody learns anything new; keep the last view.
            tracing::warn!(%error, "hub heartbeat failed");
            continue;
        }
        let seen = match deadline(store.live_hubs(&hubs)).await {
            Ok(seen) => seen,
            Err(error) => {
                tracing::warn!(%error, "could not read hub heartbeats");
                continue;
            }
        };
        if tokio::time::Instant::now() < grace_until {
            continue;
        }
        let live = live_set(&hubs, me, &seen, Some(&current), &mut misses);
        if live == current {
            continue;
        }
        let version = match deadline(store.next_view_version()).await {
            Ok(version) => version,
            Err(error) => {
                tracing::warn!(%error, "could not take an owner map version; retrying");
                continue;
            }
        };
        tracing::info!(version, ?live, "live hubs changed");
        current = live.clone();
        if events.send(StoreEvent::View { version, live }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_is_dead_after_two_missed_polls_and_this_hub_is_always_live() {
        let hubs = [0, 1, 2];
        let mut misses = HashMap::new();
        let all: Vec<HubId> = hubs.iter().map(|&h| HubId(h)).collect();
        // Hub 2's key is missing once: forgiven.
        let live = live_set(&hubs, 0, &[1], Some(&all), &mut misses);
        assert_eq!(live, all);
        // Twice in a row: dead. This hub's own key is never needed.
        let live = live_set(&hubs, 0, &[1], Some(&live), &mut misses);
        assert_eq!(live, vec![HubId(0), HubId(1)]);
        // Back: live at once.
        let live = live_set(&hubs, 0, &[1, 2], Some(&live), &mut misses);
        assert_eq!(live, all);
        // A hub never seen is not live.
        let mut fresh = HashMap::new();
        assert_eq!(live_set(&hubs, 1, &[], None, &mut fresh), vec![HubId(1)]);
    }
}
