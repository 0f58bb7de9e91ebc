//! The publish proxy (`[hooks] publish_url`): the backend allows, denies or replaces each client
//! publish before the owner hub sequences it.
//!
//! ```text
//!  Link ─Publish─▶ hub task ──divert (bounded)──▶ proxy task ──POST batch──▶ backend
//!                     ▲                               │
//!                     └──────── Decided (in order) ◀──┘
//!  hub task: allow / replace → the usual publish path (table or store); deny → Error 403
//! ```
//!
//! The hub task never waits on the backend: a client `Publish` frame (a Link's; HTTP publishes
//! come from the backend itself and are not proxied) is handed to the proxy task through
//! [`ProxyPort`], which holds at most `hooks.publish_queue_max` publishes and
//! [`MAX_WAITING_BYTES`] of payload between the hand-over and the decision's return — beyond,
//! the publish is refused at once (`503 publish proxy busy`, retry hint). The proxy task sends
//! what is waiting (up to `publish_batch_max`) in one request, one request at a time, and
//! returns the decisions in arrival order, so every room keeps its publish order. The hub task
//! then runs the very path an unproxied publish takes (`durable_link_frame`: in-memory table or
//! Redis store), so idempotency keys, dedupe and size limits apply as before; a replaced
//! payload is re-checked there against `hub.max_payload` (and here first).
//!
//! Request: `{"publishes":[{"id":N,"room":R,"user":U,"data":V}]}` (`data`: the JSON value of a
//! JSON publish, else the text). Answer: `{"results":[{"id":N,"action":"allow"|"deny"|"replace",
//! "reason":T?,"data":V?}]}`. A failed request (timeout, not 2xx, malformed answer) or a missing
//! or invalid result is a failure: allowed with `publish_fail_open`, else refused
//! `503 publish proxy unavailable` with a retry hint.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::backend::{truncate, Backend};
use crate::hub::driver::HubTask;
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON};
use linkcast_core::placement::LinkId;

/// Most payload bytes of publishes between the hand-over and the decision's return.
pub(crate) const MAX_WAITING_BYTES: usize = 64 << 20;

/// Retry hint given with a proxy 503, milliseconds.
const RETRY_MS: u32 = 1000;

/// Longest deny reason passed on to the client, bytes.
const MAX_REASON_BYTES: usize = 256;

/// A client publish on its way to the backend.
pub(crate) struct Pending {
    link: LinkId,
    generation: u64,
    frame: Frame,
}

/// The backend's decision on one publish, back at the hub task.
pub(crate) struct Decided {
    link: LinkId,
    generation: u64,
    /// The publish as the Link sent it.
    frame: Frame,
    verdict: Verdict,
}

/// What becomes of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Sequence it as is.
    Allow,
    /// Refuse it 403 with the backend's reason.
    Deny(String),
    /// Sequence this JSON instead.
    Replace(Vec<u8>),
    /// The backend failed and the proxy fails closed: refuse 503.
    Unavailable,
}

/// The hub task's end of the proxy: hands publishes over without waiting.
pub(crate) struct ProxyPort {
    tx: mpsc::UnboundedSender<Pending>,
    /// Publishes handed over whose decision the hub task has not handled yet, and their bytes.
    waiting: usize,
    waiting_bytes: usize,
    max_waiting: usize,
    busy: metrics::Counter,
}

/// The proxy task's settings.
pub(crate) struct ProxySettings {
    pub(crate) backend: Backend,
    pub(crate) batch_max: usize,
    pub(crate) fail_open: bool,
    pub(crate) max_payload: usize,
}

/// A new proxy: the hub task's port, the receiver of decisions (for the hub task's loop) and
/// the task to spawn.
pub(crate) fn start(
    settings: ProxySettings,
    queue_max: usize,
    hub: &str,
    shutdown: watch::Receiver<bool>,
) -> (ProxyPort, mpsc::UnboundedReceiver<Decided>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (decided_tx, decided_rx) = mpsc::unbounded_channel();
    let metrics = ProxyMetrics::new(hub);
    let port = ProxyPort { tx, waiting: 0, waiting_bytes: 0, max_waiting: queue_max.max(1), busy: metrics.busy.clone() };
    (port, decided_rx, run(settings, rx, decided_tx, metrics, shutdown))
}

#[derive(Clone)]
struct ProxyMetrics {
    requests: metrics::Counter,
    allowed: metrics::Counter,
    denied: metrics::Counter,
    replaced: metrics::Counter,
    failures: metrics::Counter,
    busy: metrics::Counter,
    seconds: metrics::Histogram,
}

impl ProxyMetrics {
    fn new(hub: &str) -> Self {
        // The recorder must exist before handles are made, or they record nowhere.
        let _ = crate::telemetry::prometheus();
        let hub = hub.to_owned();
        let decisions = |action: &'static str| metrics::counter!("linkcast_hub_hook_publish_decisions_total", "hub" => hub.clone(), "action" => action);
        ProxyMetrics {
            requests: metrics::counter!("linkcast_hub_hook_publish_requests_total", "hub" => hub.clone()),
            allowed: decisions("allow"),
            denied: decisions("deny"),
            replaced: decisions("replace"),
            failures: metrics::counter!("linkcast_hub_hook_publish_failures_total", "hub" => hub.clone()),
            busy: metrics::counter!("linkcast_hub_hook_publish_busy_total", "hub" => hub.clone()),
            seconds: metrics::histogram!("linkcast_hub_hook_publish_seconds", "hub" => hub),
        }
    }
}

impl ProxyPort {
    /// Hands a publish over; gives it back if too much already waits (or the task is gone).
    fn offer(&mut self, pending: Pending) -> Result<(), Pending> {
        let bytes = pending.frame.len();
        if self.waiting >= self.max_waiting || self.waiting_bytes + bytes > MAX_WAITING_BYTES {
            self.busy.increment(1);
            return Err(pending);
        }
        self.tx.send(pending).map_err(|error| error.0)?;
        self.waiting += 1;
        self.waiting_bytes += bytes;
        Ok(())
    }

    /// A decision came back: its publish no longer waits.
    fn returned(&mut self, frame: &Frame) {
        self.waiting = self.waiting.saturating_sub(1);
        self.waiting_bytes = self.waiting_bytes.saturating_sub(frame.len());
    }
}

impl HubTask {
    /// A checked frame of a Link: a client publish goes to the proxy when one is configured;
    /// everything else (and every publish without a proxy) takes the usual path at once.
    pub(in crate::hub) fn link_frame_hooked(&mut self, now: u64, link: LinkId, generation: u64, frame: Frame) {
        let Some(proxy) = self.hooks.proxy.as_mut().filter(|_| frame.kind() == Kind::Publish) else {
            return self.durable_link_frame(now, link, generation, frame);
        };
        if let Err(Pending { frame, .. }) = proxy.offer(Pending { link, generation, frame }) {
            let request = match frame.body() {
                ArchivedBody::Publish { request, .. } => request.to_native(),
                _ => 0,
            };
            self.table.refuse_request(link, frame.room(), request, 503, "publish proxy busy", RETRY_MS);
        }
    }

    /// The backend decided on a publish: run the usual path (allow, replace) or refuse it.
    pub(in crate::hub) fn handle_decided(&mut self, decided: Decided) {
        let Decided { link, generation, frame, verdict } = decided;
        if let Some(proxy) = self.hooks.proxy.as_mut() {
            proxy.returned(&frame);
        }
        if self.links.get(&link).is_none_or(|c| c.generation != generation) {
            return; // that Link connection is gone: nobody to answer
        }
        let ArchivedBody::Publish { request, key, .. } = frame.body() else { return };
        let request = request.to_native();
        let now = crate::clock::now_micros();
        match verdict {
            Verdict::Allow => self.durable_link_frame(now, link, generation, frame),
            Verdict::Replace(data) => {
                let body = Body::Publish { request, key: key.as_str().to_owned(), data };
                let replaced = FrameBuilder::new(frame.room()).sender(frame.sender()).flags(FLAG_JSON).build(&body);
                self.durable_link_frame(now, link, generation, replaced);
            }
            Verdict::Deny(reason) => {
                let error = Body::Error { request, code: 403, reason, retry_after_ms: 0 };
                self.table.send_to(link, FrameBuilder::new(frame.room()).build(&error));
            }
            Verdict::Unavailable => self.table.refuse_request(link, frame.room(), request, 503, "publish proxy unavailable", RETRY_MS),
        }
    }
}

/// The proxy task: batches what waits, one request at a time, decisions back in order.
async fn run(
    mut settings: ProxySettings,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    decided: mpsc::UnboundedSender<Decided>,
    metrics: ProxyMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_id: u64 = 0;
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => return,
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < settings.batch_max {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let ids: Vec<u64> = batch.iter().map(|_| {
            next_id += 1;
            next_id
        }).collect();
        let body = request_body(&batch, &ids);
        metrics.requests.increment(1);
        let started = Instant::now();
        let answer = tokio::select! {
            _ = shutdown.changed() => return,
            answer = settings.backend.post(body) => answer,
        };
        metrics.seconds.record(started.elapsed().as_secs_f64());
        let (answered, mut results) = match answer.and_then(|body| parse_answer(&body, settings.max_payload)) {
            Ok(results) => (true, results),
            Err(error) => {
                metrics.failures.increment(1);
                tracing::warn!(publishes = batch.len(), %error, fail_open = settings.fail_open, "publish proxy request failed");
                (false, HashMap::new())
            }
        };
        for (pending, id) in batch.into_iter().zip(ids) {
            let verdict = match results.remove(&id) {
                Some(Ok(verdict)) => verdict,
                missing_or_invalid => {
                    if answered {
                        // The request as a whole succeeded (and was not counted as failed).
                        metrics.failures.increment(1);
                        let why = match missing_or_invalid {
                            Some(Err(why)) => why,
                            _ => "no result for this publish",
                        };
                        tracing::warn!(id, why, fail_open = settings.fail_open, "publish proxy: invalid result");
                    }
                    if settings.fail_open { Verdict::Allow } else { Verdict::Unavailable }
                }
            };
            match &verdict {
                Verdict::Allow => metrics.allowed.increment(1),
                Verdict::Deny(_) => metrics.denied.increment(1),
                Verdict::Replace(_) => metrics.replaced.increment(1),
                Verdict::Unavailable => {}
            }
            let Pending { link, generation, frame } = pending;
            if decided.send(Decided { link, generation, frame, verdict }).is_err() {
                return; // the hub task is gone
            }
        }
    }
}

/// `{"publishes":[{"id","room","user","data"}]}`.
fn request_body(batch: &[Pending], ids: &[u64]) -> Bytes {
    let publishes: Vec<serde_json::Value> = batch
        .iter()
        .zip(ids)
        .map(|(pending, id)| {
            let frame = &pending.frame;
            let data = match frame.body() {
                ArchivedBody::Publish { data, .. } => data.as_slice(),
                _ => &[][..],
            };
            let data = match frame.flags() & FLAG_JSON != 0 {
                true => serde_json::from_slice(data).unwrap_or_else(|_| String::from_utf8_lossy(data).into_owned().into()),
                false => serde_json::Value::String(String::from_utf8_lossy(data).into_owned()),
            };
            serde_json::json!({"id": id, "room": frame.room(), "user": frame.sender(), "data": data})
        })
        .collect();
    Bytes::from(serde_json::json!({ "publishes": publishes }).to_string())
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<AnswerItem>,
}

#[derive(Deserialize)]
struct AnswerItem {
    id: u64,
    action: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// The backend's answer by publish id: each a verdict, or why that result is invalid. A body
/// that is not the documented JSON fails the whole request.
fn parse_answer(body: &[u8], max_payload: usize) -> Result<HashMap<u64, Result<Verdict, &'static str>>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("malformed answer: {e}"))?;
    Ok(answer
        .results
        .into_iter()
        .map(|item| {
            let verdict = match (item.action.as_str(), item.data) {
                ("allow", _) => Ok(Verdict::Allow),
                ("deny", _) => {
                    let reason = item.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "denied by the backend".into());
                    Ok(Verdict::Deny(truncate(&reason, MAX_REASON_BYTES).to_owned()))
                }
                ("replace", Some(data)) => {
                    let data = data.to_string().into_bytes();
                    if data.len() > max_payload { Err("replacement data over hub.max_payload") } else { Ok(Verdict::Replace(data)) }
                }
                ("replace", None) => Err("replace without data"),
                _ => Err("unknown action"),
            };
            (item.id, verdict)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_verdicts() {
        let body = br#"{"results":[
            {"id":1,"action":"allow"},
            {"id":2,"action":"deny","reason":"no spam"},
            {"id":3,"action":"replace","data":{"text":"***"}},
            {"id":4,"action":"replace"},
            {"id":5,"action":"shrug"},
            {"id":6,"action":"replace","data":"0123456789"},
            {"id":7,"action":"deny"}
        ]}"#;
        let results = parse_answer(body, 8).expect("parses");
        assert_eq!(results[&1], Ok(Verdict::Allow));
        assert_eq!(results[&2], Ok(Verdict::Deny("no spam".into())));
        assert_eq!(results[&3], Err("replacement data over hub.max_payload"));
        assert_eq!(results[&4], Err("replace without data"));
        assert_eq!(results[&5], Err("unknown action"));
        assert_eq!(results[&6], Err("replacement data over hub.max_payload"));
        assert_eq!(results[&7], Ok(Verdict::Deny("denied by the backend".into())));
        let results = parse_answer(br#"{"results":[{"id":3,"action":"replace","data":{"text":"***"}}]}"#, 1024).expect("parses");
        assert_eq!(results[&3], Ok(Verdict::Replace(br#"{"text":"***"}"#.to_vec())));
        assert!(parse_answer(b"not json", 1024).is_err());
        assert!(parse_answer(br#"{"nope":[]}"#, 1024).is_err());
    }

    #[test]
    fn the_port_refuses_beyond_its_bound_until_decisions_return() {
        let backend = Backend::new("http://127.0.0.1:9/p", "", crate::tls::Trust::LoopbackDev, std::time::Duration::from_secs(1)).expect("backend");
        let settings = ProxySettings { backend, batch_max: 8, fail_open: false, max_payload: 1024 };
        let (_tx, shutdown) = watch::channel(false);
        // The task is never run: what is handed over stays in its channel.
        let (mut port, _decided, _task) = start(settings, 2, "test", shutdown);
        let pending = || Pending { link: LinkId(1), generation: 1, frame: FrameBuilder::new("r").build(&Body::Publish { request: 1, key: String::new(), data: b"x".to_vec() }) };
        assert!(port.offer(pending()).is_ok());
        assert!(port.offer(pending()).is_ok());
        let refused = port.offer(pending()).expect_err("full");
        port.returned(&refused.frame);
        assert!(port.offer(pending()).is_ok(), "a returned decision makes room");
    }

    #[test]
    fn requests_carry_json_as_json_and_text_as_text() {
        let publish = |flags, data: &[u8]| {
            let frame = FrameBuilder::new("lobby")
                .sender("alice")
                .flags(flags)
                .build(&Body::Publish { request: 1, key: String::new(), data: data.to_vec() });
            Pending { link: LinkId(1), generation: 1, frame }
        };
        let body = request_body(&[publish(FLAG_JSON, br#"{"a":[1,2]}"#), publish(0, b"plain")], &[7, 8]);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"publishes":[
                {"id":7,"room":"lobby","user":"alice","data":{"a":[1,2]}},
                {"id":8,"room":"lobby","user":"alice","data":"plain"}
            ]})
        );
    }
}
