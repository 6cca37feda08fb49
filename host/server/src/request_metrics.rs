//! `http_server_request_duration_seconds` by method, route, status and HTTP version
//! (OpenTelemetry's `network.protocol.version`: `1.1` or `2`, so an operator sees which of their
//! gateways multiplex over HTTP/2).
//!
//! Asking the recorder for a histogram by its labels builds the labels (four strings), hashes
//! them and looks them up in its registry; per request that was about a percent of the server's
//! CPU under load. [`RequestDurations`] asks once per method, route, status and version and
//! keeps the handle: a request then costs one read lock, a string comparison and the record
//! itself. [`RequestDurations`] is also the layer that records them ([`Recorded`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request, StatusCode, Version};
use axum::response::Response;
use metrics::Histogram;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

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

impl<S> Layer<S> for RequestDurations {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded { inner, durations: self.clone() }
    }
}

/// A service whose requests are timed and recorded under their labels. On the routes
/// (`Router::layer`), so the route a request matched is known; its future holds the inner one
/// in place, where `axum::middleware::from_fn` boxed a clone of the route and the future for
/// every request.
#[derive(Clone)]
pub struct Recorded<S> {
    inner: S,
    durations: RequestDurations,
}

impl<S, B> Service<Request<B>> for Recorded<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recording<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let (method, version) = (req.method().clone(), req.version());
        let route = req.extensions().get::<MatchedPath>().cloned();
        Recording { inner: self.inner.call(req), durations: self.durations.clone(), method, version, route, started }
    }
}

pin_project! {
    /// A request's future, which records its duration when the answer is ready.
    pub struct Recording<F> {
        #[pin]
        inner: F,
        durations: RequestDurations,
        method: Method,
        version: Version,
        route: Option<MatchedPath>,
        started: Instant,
    }
}

impl<F, E> Future for Recording<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            this.durations
                .histogram(this.method, route, response.status(), *this.version)
                .record(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(answer)
    }
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

    #[tokio::test]
    async fn each_answer_is_recorded_under_the_route_it_matched_or_as_unmatched() {
        use axum::Router;
        use axum::body::Body;
        use axum::routing::get;
        use tower::ServiceExt as _;

        let durations = RequestDurations::default();
        let app = Router::new().route("/things/{id}", get(|| async { StatusCode::ACCEPTED })).layer(durations.clone());
        for uri in ["/things/1", "/things/2", "/nowhere"] {
            app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        }
        let by_route = durations.by_route.read().unwrap();
        let recorded = |route: &str| -> Vec<(Method, StatusCode, Version)> {
            by_route[route].iter().map(|(m, s, v, _)| (m.clone(), *s, *v)).collect()
        };
        assert_eq!(recorded("/things/{id}"), [(Method::GET, StatusCode::ACCEPTED, Version::HTTP_11)]);
        assert_eq!(recorded(UNMATCHED), [(Method::GET, StatusCode::NOT_FOUND, Version::HTTP_11)]);
    }
}
