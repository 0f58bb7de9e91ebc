//! Webhooks (`[hooks] events_url`): the backend hears when a room gets its first member or
//! loses its last (`room_occupied` / `room_vacated`) and when a user's first connection arrives
//! or last leaves (`user_connected` / `user_disconnected`).
//!
//! ```text
//!  room table ─Occupancy─▶ hub task ─push (never waits)─▶ EventQueue ─▶ webhook task ─POST─▶ backend
//! ```
//!
//! Where the events come from: the owner hub's room table, where interest changes
//! (`RoomTable::poll_occupancy`, in both the in-memory and the Redis path): a room's member
//! count over all Links went 0 → some or some → 0. Every connection of a user is in its personal
//! room `user:{uid}` (`system_rooms`), so that room's edges are the user's connect and
//! disconnect (`user` = the room name without `user:`); other rooms give `room_occupied` /
//! `room_vacated`. After an owner change the new owner reports the rooms it now sees occupied:
//! the backend should treat events as the latest state of a room or user, not count them.
//!
//! Delivery: the hub task pushes into a [`EventQueue`] of at most `events_queue_max` events
//! (beyond, the oldest is dropped and counted); the lock is held only to push or take, never
//! across I/O. The webhook task waits `events_flush_ms` after the first event, sends up to
//! `events_batch_max` in one signed request `{"events":[{"type","room"?,"user"?,"ts"}]}`, and
//! retries a failed batch (not 2xx, no answer within 5 s, connection error) after 100 ms, doubling up to
//! 5 s, for `events_retry_max` attempts in all; then the batch is dropped, counted and logged.
//! Batches go one at a time, so events arrive in the order they happened (a retried batch
//! before anything later).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::backend::Backend;
use crate::hub::driver::{lock, HubTask};
use linkcast_core::room_table::Occupancy;
use linkcast_core::system_rooms::{personal_user, PERSONAL_PREFIX};

/// First retry delay of a failed batch; doubles each attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A webhook request not answered within this long has failed (and is retried).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One event as the backend gets it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct HookEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// When the owner hub saw the change, micros since the Unix epoch.
    ts: u64,
}

impl HookEvent {
    /// The event an occupancy change makes (`None` for a `user:` room without a user).
    pub(crate) fn of(change: Occupancy) -> Option<HookEvent> {
        let Occupancy { room, occupied, ts_micros: ts } = change;
        if room.starts_with(PERSONAL_PREFIX) {
            let user = personal_user(&room)?.to_owned();
            let kind = if occupied { "user_connected" } else { "user_disconnected" };
            return Some(HookEvent { kind, room: None, user: Some(user), ts });
        }
        let kind = if occupied { "room_occupied" } else { "room_vacated" };
        Some(HookEvent { kind, room: Some(room), user: None, ts })
    }
}

/// Events waiting for the webhook task: bounded, oldest dropped first.
pub(crate) struct EventQueue {
    events: Mutex<VecDeque<HookEvent>>,
    ready: Notify,
    max: usize,
    metrics: EventMetrics,
}

#[derive(Clone)]
struct EventMetrics {
    sent: metrics::Counter,
    failures: metrics::Counter,
    dropped_full: metrics::Counter,
    dropped_retries: metrics::Counter,
    queued: metrics::Gauge,
}

impl EventQueue {
    /// An empty queue of at most `max` events (metrics labelled `hub`).
    pub(crate) fn new(max: usize, hub: &str) -> Arc<EventQueue> {
        // The recorder must exist before handles are made, or they record nowhere.
        let _ = crate::telemetry::prometheus();
        let hub = hub.to_owned();
        let dropped = |reason: &'static str| metrics::counter!("linkcast_hub_hook_events_dropped_total", "hub" => hub.clone(), "reason" => reason);
        let metrics = EventMetrics {
            sent: metrics::counter!("linkcast_hub_hook_events_sent_total", "hub" => hub.clone()),
            failures: metrics::counter!("linkcast_hub_hook_events_failures_total", "hub" => hub.clone()),
            dropped_full: dropped("queue_full"),
            dropped_retries: dropped("retries"),
            queued: metrics::gauge!("linkcast_hub_hook_events_queued", "hub" => hub),
        };
        Arc::new(EventQueue { events: Mutex::new(VecDeque::new()), ready: Notify::new(), max: max.max(1), metrics })
    }

    /// Adds an event; drops the oldest when full. Never waits (beyond the short lock).
    pub(crate) fn push(&self, event: HookEvent) {
        let mut events = lock(&self.events);
        if events.len() >= self.max {
            events.pop_front();
            self.metrics.dropped_full.increment(1);
        }
        events.push_back(event);
        self.metrics.queued.set(events.len() as f64);
        drop(events);
        self.ready.notify_one();
    }

    /// Takes up to `n` events, oldest first.
    fn take(&self, n: usize) -> Vec<HookEvent> {
        let mut events = lock(&self.events);
        let n = n.min(events.len());
        let batch = events.drain(..n).collect();
        self.metrics.queued.set(events.len() as f64);
        batch
    }

    fn is_empty(&self) -> bool {
        lock(&self.events).is_empty()
    }
}

impl HubTask {
    /// Hands the table's occupancy changes to the webhook queue (called as the hub task
    /// flushes; nothing is tracked without an `events_url`).
    pub(in crate::hub) fn emit_occupancy(&mut self) {
        let Some(queue) = &self.hooks.events else { return };
        while let Some(change) = self.table.poll_occupancy() {
            if let Some(event) = HookEvent::of(change) {
                queue.push(event);
            }
        }
    }
}

/// The webhook task's settings.
pub(crate) struct EventSettings {
    pub(crate) backend: Backend,
    pub(crate) batch_max: usize,
    pub(crate) flush: Duration,
    pub(crate) retry_max: u32,
}

/// The webhook task: batches, sends, retries with backoff, in order.
pub(crate) async fn run(mut settings: EventSettings, queue: Arc<EventQueue>, mut shutdown: watch::Receiver<bool>) {
    loop {
        while queue.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = queue.ready.notified() => {}
            }
        }
        // Let the batch fill for the flush interval (or until it is full).
        let deadline = tokio::time::Instant::now() + settings.flush;
        while lock(&queue.events).len() < settings.batch_max {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = queue.ready.notified() => {}
            }
        }
        let batch = queue.take(settings.batch_max);
        if batch.is_empty() {
            continue;
        }
        let body = Bytes::from(serde_json::json!({ "events": batch }).to_string());
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=settings.retry_max {
            let outcome = tokio::select! {
                _ = shutdown.changed() => return,
                outcome = settings.backend.post(body.clone()) => outcome,
            };
            let error = match outcome {
                Ok(_) => {
                    queue.metrics.sent.increment(batch.len() as u64);
                    break;
                }
                Err(error) => error,
            };
            queue.metrics.failures.increment(1);
            if attempt == settings.retry_max {
                queue.metrics.dropped_retries.increment(batch.len() as u64);
                tracing::error!(events = batch.len(), attempts = attempt, %error, "webhook batch dropped after its last attempt");
                break;
            }
            tracing::warn!(events = batch.len(), attempt, %error, retry_in_ms = backoff.as_millis() as u64, "webhook request failed; retrying");
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(room: &str, occupied: bool) -> Occupancy {
        Occupancy { room: room.into(), occupied, ts_micros: 42 }
    }

    #[test]
    fn personal_rooms_are_users_and_other_rooms_are_rooms() {
        let json = |event: Option<HookEvent>| serde_json::to_value(event.expect("an event")).expect("JSON");
        assert_eq!(json(HookEvent::of(change("lobby", true))), serde_json::json!({"type":"room_occupied","room":"lobby","ts":42}));
        assert_eq!(json(HookEvent::of(change("lobby", false))), serde_json::json!({"type":"room_vacated","room":"lobby","ts":42}));
        assert_eq!(json(HookEvent::of(change("user:bob", true))), serde_json::json!({"type":"user_connected","user":"bob","ts":42}));
        assert_eq!(json(HookEvent::of(change("user:bob", false))), serde_json::json!({"type":"user_disconnected","user":"bob","ts":42}));
        assert_eq!(HookEvent::of(change("user:", true)), None);
    }

    #[test]
    fn a_full_queue_drops_its_oldest() {
        let queue = EventQueue::new(2, "test");
        for room in ["a", "b", "c"] {
            queue.push(HookEvent::of(change(room, true)).expect("event"));
        }
        let rooms: Vec<Option<String>> = queue.take(10).into_iter().map(|e| e.room).collect();
        assert_eq!(rooms, vec![Some("b".to_string()), Some("c".to_string())]);
        assert!(queue.is_empty());
    }
}
