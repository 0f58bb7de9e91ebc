//! `GET /v1/links` (admin scope: `ApiState::check_admin`): the Links the cluster knows —
//! listed in `[[links]]`, registered, or announced by an unlisted Link accepted with mutual TLS
//! — with where clients reach them and their state:
//! `{"links":[{"id","ws","quic","admin"|null,"connected","draining","listed"}],"incomplete_hubs":[ids]}`.
//!
//! The hub that is asked reads its own locator (locate.rs) and asks every other configured hub
//! for its view with `local=1` (concurrently, each bounded by `presence_api::PEER_TIMEOUT`,
//! through `presence_api::ask_peers` like `GET /v1/rooms`), then merges by id: a Link is `connected` / `draining` / `listed` if it
//! is at any hub that answered, and its addresses are the first non-empty ones seen. A hub that
//! does not answer in time is listed in `incomplete_hubs`. With `local=1` a hub answers only
//! what it knows itself. `linkcast top` reads it to find Links' admin addresses.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::driver::lock;
use super::error::ApiError;
use super::locate::LinkView;
use super::presence_api::{ask_peers, only_local};
use super::ApiState;

/// Query of the Link list.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LinksQuery {
    /// `1`/`true`: this hub's view only (what a hub asks its peers).
    local: Option<String>,
}

/// A peer's answer.
#[derive(Debug, serde::Deserialize)]
struct PeerLinks {
    links: Vec<LinkView>,
}

/// `GET /v1/links[?local=1]`.
pub(crate) async fn links(
    State(shared): State<Arc<ApiState>>,
    query: Result<Query<LinksQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shared.check_admin(&headers)?;
    let Query(query) = query.map_err(ApiError::rejected)?;
    let local = only_local(query.local.as_deref(), &headers);
    let mut links = lock(&shared.locator).snapshot();
    let mut incomplete: Vec<u32> = Vec::new();
    if !local {
        let (answers, missing) = ask_peers::<PeerLinks>(&shared, "/v1/links?local=1", &headers).await;
        links.extend(answers.into_iter().flat_map(|(_, peer)| peer.links));
        incomplete = missing;
        links = merge(links);
    }
    Ok(Json(serde_json::json!({ "links": links, "incomplete_hubs": incomplete })).into_response())
}

/// Views of the same Links from several hubs, one per id (see the module docs).
fn merge(views: Vec<LinkView>) -> Vec<LinkView> {
    let mut merged: BTreeMap<u32, LinkView> = BTreeMap::new();
    for view in views {
        match merged.get_mut(&view.id) {
            None => {
                merged.insert(view.id, view);
            }
            Some(seen) => {
                if seen.ws.is_empty() {
                    seen.ws = view.ws;
                }
                if seen.quic.is_empty() {
                    seen.quic = view.quic;
                }
                if seen.admin.is_none() {
                    seen.admin = view.admin;
                }
                seen.connected |= view.connected;
                seen.draining |= view.draining;
                seen.listed |= view.listed;
            }
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u32, ws: &str, connected: bool, draining: bool) -> LinkView {
        LinkView { id, ws: ws.into(), quic: String::new(), admin: None, connected, draining, listed: false }
    }

    #[test]
    fn views_merge_by_id() {
        let merged = merge(vec![view(4, "", false, false), view(1, "ws://a:1/ws", true, false), view(4, "ws://b:2/ws", true, true)]);
        assert_eq!(merged, vec![view(1, "ws://a:1/ws", true, false), view(4, "ws://b:2/ws", true, true)]);
    }
}
