//! The admin port's pages of a scheduler node ([`pages`]): the status page ([`crate::status`]),
//! actions, input trees and downloads ([`crate::action_page`]), and invocations
//! ([`crate::events::pages`]). Each needs the `admin` permission; each is sent with a
//! Content-Security-Policy that allows no script, and `nosniff`.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use remexec_core::server::admin::{Readiness, refusal};
use remexec_core::{Digest, Error, ReadRange, Result};

use crate::status::StatusSource;

type S = (StatusSource, Readiness);

/// `/`, `/status`, `/action/HASH/SIZE`, `/tree/HASH/SIZE`, `/blob/HASH/SIZE`, and with build
/// events `/invocations` and `/invocation/ID`, over `source`, reporting `readiness`: the
/// pages a scheduler node merges into its admin port.
pub fn pages(source: StatusSource, readiness: Readiness) -> axum::Router {
    axum::Router::new()
        .route("/", get(status_html))
        .route("/status", get(status_json))
        .route("/action/{hash}/{size}", get(action))
        .route("/tree/{hash}/{size}", get(tree))
        .route("/blob/{hash}/{size}", get(blob))
        .route("/invocations", get(invocations))
        .route("/invocation/{id}", get(invocation))
        .layer(axum::middleware::map_response(secure))
        .with_state((source, readiness))
}

/// No script, no framing, no sniffing: event and action content is the client's.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether the request asks for JSON.
fn wants_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

async fn status_json(State((src, ready)): State<S>, headers: http::HeaderMap) -> Response {
    match src.authorize(&headers, "/status") {
        Ok(()) => Json(src.snapshot(ready.is_ready())).into_response(),
        Err(e) => refusal(&e),
    }
}

async fn status_html(State((src, ready)): State<S>, headers: http::HeaderMap) -> Response {
    match src.authorize(&headers, "/") {
        Ok(()) => match wants_json(&headers) {
            true => Json(src.snapshot(ready.is_ready())).into_response(),
            false => Html(crate::status::page(&src.snapshot(ready.is_ready()))).into_response(),
        },
        Err(e) => refusal(&e),
    }
}

/// The query of the CAS pages.
#[derive(Debug, serde::Deserialize)]
struct CasQuery {
    #[serde(default)]
    instance: String,
    response: Option<String>,
    invocation: Option<String>,
    #[serde(default)]
    path: String,
    #[serde(default)]
    name: String,
    /// `text`: a log, shown in the browser as plain text.
    view: Option<String>,
}

fn digest(hash: &str, size: &str, instance: &str) -> Result<Digest> {
    remexec_core::validate_instance_name(instance)?;
    crate::observe::parse_digest(hash, size)
}

fn html(page: Result<String>) -> Response {
    match page {
        Ok(page) => Html(page).into_response(),
        Err(e) => refusal(&e),
    }
}

async fn action(
    State((src, _)): State<S>,
    headers: http::HeaderMap,
    Path((hash, size)): Path<(String, String)>,
    Query(query): Query<CasQuery>,
) -> Response {
    html(
        async {
            src.authorize(&headers, "/action")?;
            let action = digest(&hash, &size, &query.instance)?;
            let response = match query
                .response
                .as_deref()
                .and_then(crate::observe::split_digest)
            {
                Some((h, s)) => Some(crate::observe::parse_digest(h, s)?),
                None => None,
            };
            let invocation = query
                .invocation
                .as_deref()
                .filter(|id| crate::observe::is_invocation_id(id));
            src.action_page(action, &query.instance, response, invocation)
                .await
        }
        .await,
    )
}

async fn tree(
    State((src, _)): State<S>,
    headers: http::HeaderMap,
    Path((hash, size)): Path<(String, String)>,
    Query(query): Query<CasQuery>,
) -> Response {
    html(
        async {
            src.authorize(&headers, "/tree")?;
            let dir = digest(&hash, &size, &query.instance)?;
            let path = crate::events::invocation::cut(&query.path, 4096);
            crate::action_page::tree_page(src.store.as_ref(), &query.instance, dir, path).await
        }
        .await,
    )
}

/// A blob, streamed: as an attachment named by `name`, with no type a browser would render.
async fn blob(
    State((src, _)): State<S>,
    headers: http::HeaderMap,
    Path((hash, size)): Path<(String, String)>,
    Query(query): Query<CasQuery>,
) -> Response {
    let found = async {
        src.authorize(&headers, "/blob")?;
        let d = digest(&hash, &size, &query.instance)?;
        let stream = src
            .store
            .get(&query.instance, d, ReadRange::ALL)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{d} is not in the CAS").into()))?;
        Ok::<_, Error>((d, stream))
    };
    match found.await {
        Ok((d, stream)) => {
            let name = crate::action_page::download_name(&query.name);
            let body = axum::body::Body::from_stream(stream);
            // Text is shown as text only: with `nosniff` and no script allowed.
            let (kind, disposition) = match query.view.as_deref() {
                Some("text") => ("text/plain; charset=utf-8", "inline"),
                _ => ("application/octet-stream", "attachment"),
            };
            (
                [
                    (http::header::CONTENT_TYPE, kind.to_string()),
                    (http::header::CONTENT_LENGTH, d.size().to_string()),
                    (
                        http::header::CONTENT_DISPOSITION,
                        format!("{disposition}; filename=\"{name}\""),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => refusal(&e),
    }
}

async fn invocations(State((src, _)): State<S>, headers: http::HeaderMap) -> Response {
    if let Err(e) = src.authorize(&headers, "/invocations") {
        return refusal(&e);
    }
    let Some(events) = &src.events else {
        return refusal(&no_events());
    };
    let rows = events.invocations(1000);
    match wants_json(&headers) {
        true => Json(rows).into_response(),
        false => Html(crate::events::pages::list_page(&rows, events.usage())).into_response(),
    }
}

fn no_events() -> Error {
    Error::NotFound("this server keeps no build events ([build_events] enabled = false)".into())
}

async fn invocation(
    State((src, _)): State<S>,
    headers: http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let found = async {
        src.authorize(&headers, "/invocation")?;
        let events = src.events.as_ref().ok_or_else(no_events)?;
        crate::events::service::check_id(&id, "the invocation id")?;
        events
            .invocation(&id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("invocation {id} is not kept here").into()))
    };
    match found.await {
        Ok(inv) if wants_json(&headers) => Json(inv).into_response(),
        Ok(inv) => html(crate::events::pages::invocation_page(&inv, src.store.as_ref()).await),
        Err(e) => refusal(&e),
    }
}
