//! The hub's HTTP listener: accepts connections for the axum router (`http.rs`) with the bounds
//! a public port needs, over plain TCP or TLS (`https://` with the `[tls]` certificate).
//!
//! Each accepted socket takes one of `hub.max_http_connections` slots first (beyond: closed at
//! once, counted in `linkcast_hub_http_refused_total{reason}`), then has
//! `hub.http_header_timeout_secs` to finish TLS and to send each request head (hyper's
//! `header_read_timeout`) — a slowloris client trickling a head is cut then, holding one slot
//! for that long. A request's body and handling are bounded by the router's request timeout
//! (408). On shutdown the listener stops and every connection finishes its request in flight
//! (bounded) and closes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Time connections get to finish their request in flight at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of the listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most open connections.
    pub(crate) max_connections: usize,
    /// Time to finish TLS, and to send each request head.
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` (see the module docs).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let service = TowerToHyperService::new(app);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "hub http accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("linkcast_hub_http_refused_total", "reason" => "connections").increment(1);
            continue;
        };
        let (service, acceptor, stop) = (service.clone(), acceptor.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match acceptor {
                None => connection(TokioIo::new(tcp), service, limits, stop).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => connection(TokioIo::new(stream), service, limits, stop).await,
                    _ => metrics::counter!("linkcast_hub_http_refused_total", "reason" => "tls handshake").increment(1),
                },
            }
            drop(permit);
        });
    }
}

async fn connection<I>(io: I, service: TowerToHyperService<Router>, limits: Limits, mut shutdown: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}
