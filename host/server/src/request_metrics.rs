//! `http_server_request_duration_seconds` by method, route, status and HTTP version
//! (OpenTelemetry's `network.protocol.version`: `1.1` or `2`, so an operator sees which of their
//! gateways multiplex over HTTP/2).
//!
//! Asking the recorder for a histogram by its labels builds the labels (four strings), hashes
//! them and looks them up in its registry; per request that was about a percent of the server's
//! CPU under load. [`RequestDurations`] asks once per method, route, status and version and
//! keeps the handle: a request then costs one read lock, a string comparison and the record
//! itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Version};
use axum::middleware::Next;
use axum::response::Response;
use metrics::Histogram;

/// The histogram name.
const NAME: &str = "http_server_request_duration_seconds";
/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// A route's histograms, by method, status and HTTP version: few enough to scan.
type RouteHistograms = Vec<(Method, StatusCode, Version, Histogram)>;

/// The histograms of the requests seen so far, registered once each. Cheap to clone.
#[derive(Clone, Default)]
pub struct RequestDurations {
    by_route: Arc<RwLock<HashMap<String, RouteHistograms>>>,
}

impl RequestDurations {
    /// The histogram of `method` on `route` over `version` answered `status`, registered on
    /// first use.
    fn histogram(&self, method: &Method, route: &str, status: StatusCode, version: Version) -> Histogram {
        let known = |by_route: &HashMap<String, RouteHistograms>| {
            by_route
                .get(route)?
                .iter()
                .find(|(m, s, v, _)| m == method && *s == status && *v == version)
                .map(|(_, _, _, h)| h.clone())
        };
        if let Some(histogram) = known(&self.by_route.read().unwrap_or_else(|p| p.into_inner())) {
            return histogram;
        }
        let mut by_route = self.by_route.write().unwrap_or_else(|p| p.into_inner());
        if let Some(histogram) = known(&by_route) {
            return histogram;
        }
        let labels = [
            ("http_request_method", method.to_string()),
            ("http_route", route.to_string()),
            ("http_response_status_code", status.as_u16().to_string()),
            ("network_protocol_version", protocol_version(version).to_string()),
        ];
        let histogram = metrics::histogram!(NAME, &labels);
        by_route.entry(route.to_string()).or_default().push((method.clone(), status, version, histogram.clone()));
        histogram
    }
}

/// OpenTelemetry's `network.protocol.version` of an HTTP version.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "other",
    }
}

/// The layer's function: times the request and records it under its labels.
pub async fn record(State(durations): State<RequestDurations>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, version) = (req.method().clone(), req.version());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    durations.histogram(&method, route, response.status(), version).record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_registered_once_per_method_route_status_and_version() {
        let durations = RequestDurations::default();
        let consume = "/api/v1/tokens/consume";
        for _ in 0..3 {
            durations.histogram(&Method::POST, consume, StatusCode::OK, Version::HTTP_11).record(0.1);
            durations.histogram(&Method::POST, consume, StatusCode::OK, Version::HTTP_2).record(0.1);
        }
        durations.histogram(&Method::POST, consume, StatusCode::TOO_MANY_REQUESTS, Version::HTTP_11).record(0.1);
        durations.histogram(&Method::GET, consume, StatusCode::OK, Version::HTTP_11).record(0.1);
        durations.histogram(&Method::GET, UNMATCHED, StatusCode::NOT_FOUND, Version::HTTP_11).record(0.1);
        let by_route = durations.by_route.read().unwrap();
        assert_eq!(by_route.len(), 2);
        assert_eq!(by_route[consume].len(), 4);
        assert_eq!(by_route[UNMATCHED].len(), 1);
    }
}
