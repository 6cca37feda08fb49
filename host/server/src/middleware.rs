//! Cross-cutting HTTP layers: request ids, a span per request, timeouts, the body limit and the
//! OpenTelemetry-style HTTP server metrics ([`crate::request_metrics`]).

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::request_metrics::RequestDurations;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the routes in every layer and gives them `state`.
///
/// Only the metrics layer, which needs the route a request matched, goes on the routes
/// (`Router::layer` puts a layer on each route, boxed, so every layer there costs each request
/// a boxed clone and a boxed future). The others wrap the whole router once, in one service
/// that the outer router's fallback holds; a request passes them in the same order as before,
/// the request id first. None of them boxes a request's future (axum's `from_fn` and
/// `map_response` did, with a clone of the service they wrap): each holds the one inside it.
pub fn wrap(router: Router<AppState>, state: AppState) -> Router {
    let settings = &state.settings.server;
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .map_request(never_indexed_request_id)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .map_response(json_errors)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(settings.request_timeout_ms),
        ))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes));
    let routes = router.layer(RequestDurations::default()).with_state(state);
    Router::new().fallback_service(layers.service(routes))
}

/// Marks the request's id, which the answer carries back, as a field HTTP/2 never indexes.
///
/// HTTP/2 compresses header fields (HPACK) with a table of recent fields that both ends keep:
/// a field sent again costs a few bytes. A request id never comes again, so indexing it only
/// adds one entry an answer, which pushes out fields that do repeat; and the encoder compares
/// each new value with every value of that name in the table. Under a gateway's load the
/// encoder's share of the server's CPU went from 4.9% to 3.4% with this (docs/09-performance.md,
/// "fourteenth sitting"). A sensitive value is sent as a literal and kept out of the table (RFC
/// 7541, section 6.2.3). It changes nothing over HTTP/1.1, and ids a client sends are marked
/// too, since they do not repeat either.
fn never_indexed_request_id(mut request: Request) -> Request {
    if let Some(id) = request.headers_mut().get_mut(&REQUEST_ID) {
        id.set_sensitive(true);
    }
    request
}

/// Gives a JSON error body to error answers that have none (the timeout layer's 503), so every
/// error a client sees has the API's `{"error": {code, message}}` shape.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || response.headers().contains_key(CONTENT_TYPE) {
        return response;
    }
    let (code, message) = match status {
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the request took longer than the server allows"),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long to arrive"),
        _ => ("error", status.canonical_reason().unwrap_or("error")),
    };
    let (mut parts, _) = response.into_parts();
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_request_id_is_kept_out_of_the_header_compression_table_and_left_as_it_was() {
        let request =
            Request::builder().header(&REQUEST_ID, "client-chosen-id").body(axum::body::Body::empty()).unwrap();
        let request = never_indexed_request_id(request);
        let id = &request.headers()[&REQUEST_ID];
        assert!(id.is_sensitive());
        assert_eq!(id, "client-chosen-id");
    }

    #[test]
    fn a_request_without_an_id_passes_unchanged() {
        let request = never_indexed_request_id(Request::new(axum::body::Body::empty()));
        assert!(request.headers().is_empty());
    }
}
