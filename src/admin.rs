//! The operators' listener of a node (`[admin] addr` for `serve`, `admin = "addr"` in a
//! `[[hubs]]` / `[[links]]` entry): `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! These routes leave the public ports of a secured node (the hub's API port and the Link's
//! WebSocket port keep only what clients need); bind this listener to a private address. When
//! any `[[auth.keys]]` entry has the `admin` scope, every request here needs one of those keys as
//! `Authorization: Bearer` (401 otherwise). [`AdminServer::start`] runs it on its own thread,
//! so a Link (which has no shared runtime) and a hub start it alike.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::config::{AuthConfig, Scope};

/// A running admin listener; dropping it stops it.
#[derive(Debug)]
pub(crate) struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves on a thread of its own.
    pub(crate) fn start(addr: SocketAddr, auth: &AuthConfig) -> std::io::Result<AdminServer> {
        let keys: Vec<String> =
            auth.scoped_keys().filter(|(_, scopes)| scopes.contains(&Scope::Admin)).map(|(k, _)| k.to_owned()).collect();
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("linkcast-admin".into()).spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let app = Router::new()
                    .route("/metrics", get(metrics))
                    .route("/healthz", get(healthz))
                    .fallback(not_found)
                    .with_state(Arc::new(keys));
                let stop = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                    tracing::error!("admin listener failed: {e}");
                }
            });
        })?;
        Ok(AdminServer { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The thread ends once open requests finish; it is not joined (drop may run on a runtime).
        drop(self.thread.take());
    }
}

fn refused(headers: &HeaderMap, keys: &[String]) -> Option<Response> {
    if keys.is_empty() {
        return None;
    }
    let bearer = crate::hub::bearer(headers);
    if bearer.is_some_and(|b| keys.iter().any(|k| linkcast_core::auth::constant_time_eq(k.as_bytes(), b.as_bytes()))) {
        return None;
    }
    let body = Json(serde_json::json!({ "error": "unauthorized", "reason": "admin API key required (Authorization: Bearer)" }));
    Some((StatusCode::UNAUTHORIZED, body).into_response())
}

async fn metrics(State(keys): State<Arc<Vec<String>>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&headers, &keys) {
        return refusal;
    }
    let text = crate::telemetry::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn healthz(State(keys): State<Arc<Vec<String>>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&headers, &keys) {
        return refusal;
    }
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "not_found", "reason": "no such route" }))).into_response()
}
