//! The hub's backend hooks (`[hooks]`): the publish proxy and the webhooks. Both are optional
//! (empty URL = off) and run in tasks of their own, so the hub task never waits on the backend.
//!
//! - `proxy.rs`: client publishes are POSTed (batched, with a timeout) to `publish_url` before
//!   they are sequenced; the backend allows, denies (403 + its reason) or replaces each;
//! - `webhooks.rs`: room occupied / vacated and user connected / disconnected, seen where the
//!   room table handles interest, batched to `events_url` and retried with backoff;
//! - `backend.rs`: the signed JSON POST both use (one keep-alive connection per hook);
//! - `signature.rs`: `X-Linkcast-Signature: sha256=<hex HMAC-SHA256 of the body>` under
//!   `hooks.secret`. A secured hub refuses to start with a hook URL and no secret
//!   (`HooksConfig::check_node`); a dev hub without one sends unsigned requests, and says so.
//!
//! [`start`] builds the ports the hub task holds ([`Hooks`]), the proxy's decision channel the
//! hub task's loop reads, and the tasks to spawn.

mod backend;
mod proxy;
mod signature;
mod webhooks;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub(crate) use proxy::Decided;

use crate::config::Config;
use backend::Backend;
use linkcast_core::hub_directory::HubId;

/// The hub task's ends of the hooks (both `None`: no hooks).
#[derive(Default)]
pub(crate) struct Hooks {
    proxy: Option<proxy::ProxyPort>,
    events: Option<Arc<webhooks::EventQueue>>,
}

impl Hooks {
    /// True when the room table must report occupancy changes (webhooks are on).
    pub(crate) fn tracks_occupancy(&self) -> bool {
        self.events.is_some()
    }
}

/// What [`start`] gives the hub: the ports, the proxy's decisions (for the hub task's loop) and
/// the tasks to spawn.
pub(crate) struct Started {
    pub(crate) hooks: Hooks,
    pub(crate) decided: Option<mpsc::UnboundedReceiver<Decided>>,
    pub(crate) tasks: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// Builds the configured hooks of hub `id` (`secured`: `Config::is_secured` for this hub).
pub(crate) fn start(id: HubId, config: &Config, secured: bool, shutdown: &watch::Receiver<bool>) -> std::io::Result<Started> {
    let hooks = &config.hooks;
    let mut started = Started { hooks: Hooks::default(), decided: None, tasks: Vec::new() };
    if !hooks.is_on() {
        return Ok(started);
    }
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    hooks.check_node(secured).map_err(|e| invalid(e.to_string()))?;
    if hooks.secret.is_empty() {
        tracing::warn!("hooks: no hooks.secret: hook requests are sent unsigned (dev mode); set one so the backend can verify them");
    }
    let trust = crate::tls::Trust::from_config(&config.tls).map_err(|e| invalid(format!("hooks: {e}")))?;
    let hub = id.0.to_string();
    if !hooks.publish_url.is_empty() {
        let backend = Backend::new(&hooks.publish_url, &hooks.secret, trust.clone(), Duration::from_millis(hooks.publish_timeout_ms))?;
        let settings = proxy::ProxySettings {
            backend,
            batch_max: hooks.publish_batch_max.max(1),
            fail_open: hooks.publish_fail_open,
            max_payload: config.hub.max_payload,
        };
        let (port, decided, task) = proxy::start(settings, hooks.publish_queue_max, &hub, shutdown.clone());
        started.hooks.proxy = Some(port);
        started.decided = Some(decided);
        started.tasks.push(Box::pin(task));
        tracing::info!(hub = id.0, url = %hooks.publish_url, fail_open = hooks.publish_fail_open, "publish proxy on");
    }
    if !hooks.events_url.is_empty() {
        let backend = Backend::new(&hooks.events_url, &hooks.secret, trust, webhooks::REQUEST_TIMEOUT)?;
        let queue = webhooks::EventQueue::new(hooks.events_queue_max, &hub);
        let settings = webhooks::EventSettings {
            backend,
            batch_max: hooks.events_batch_max.max(1),
            flush: Duration::from_millis(hooks.events_flush_ms),
            retry_max: hooks.events_retry_max.max(1),
        };
        started.hooks.events = Some(queue.clone());
        started.tasks.push(Box::pin(webhooks::run(settings, queue, shutdown.clone())));
        tracing::info!(hub = id.0, url = %hooks.events_url, "webhooks on");
    }
    Ok(started)
}
