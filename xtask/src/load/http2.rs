//! The load generator's HTTP/2 side: cleartext HTTP/2 with prior knowledge, as a gateway (an
//! envoy cluster, a gRPC-style client) keeps a few connections to the limiter and multiplexes
//! its calls over them. Each connection carries a fixed number of streams, each stream task
//! sending its next request as soon as the last one is answered.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Uri};
use tokio::net::TcpStream;

use super::{Stats, USER_STRIDE};

/// The consume requests, built before the clock starts: the parts every request shares and one
/// body per user.
pub struct Requests {
    uri: Uri,
    authorization: HeaderValue,
    bodies: Vec<Bytes>,
}

impl Requests {
    pub fn new(token: &str, bodies: impl Iterator<Item = String>) -> Result<Self> {
        Ok(Self {
            uri: Uri::from_static("http://bench/api/v1/tokens/consume"),
            authorization: HeaderValue::try_from(format!("Bearer {token}")).context("the token is not a header")?,
            bodies: bodies.map(Bytes::from).collect(),
        })
    }

    fn request(&self) -> Result<Request<()>> {
        Ok(Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(())?)
    }
}

/// One connection with `streams` requests in flight from `from` until `until`; stream `s`
/// starts at user `first + s`.
pub async fn connection(
    addr: &str,
    requests: Arc<Requests>,
    streams: usize,
    first: usize,
    from: Instant,
    until: Instant,
) -> Result<Stats> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (client, connection) = h2::client::handshake(socket).await.context("HTTP/2 handshake")?;
    let driver = tokio::spawn(connection);
    let senders: Vec<_> = (0..streams)
        .map(|s| {
            let (client, requests) = (client.clone(), Arc::clone(&requests));
            tokio::spawn(async move { one_stream_at_a_time(client, &requests, first + s, from, until).await })
        })
        .collect();
    drop(client);
    let mut stats = Stats::default();
    for sender in senders {
        stats.merge(sender.await??);
    }
    driver.abort();
    Ok(stats)
}

/// Sends requests one after another, each on a new stream of the connection.
async fn one_stream_at_a_time(
    mut client: SendRequest<Bytes>,
    requests: &Requests,
    first: usize,
    from: Instant,
    until: Instant,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut user = first;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let body = requests.bodies[user % requests.bodies.len()].clone();
        user += USER_STRIDE;
        client = client.ready().await?;
        let (answer, mut request_body) = client.send_request(requests.request()?, false)?;
        request_body.send_data(body, true)?;
        let answer = answer.await?;
        let status = answer.status().as_u16();
        let mut answer_body = answer.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = answer_body.data().await {
            let chunk = chunk?;
            answer_body.flow_control().release_capacity(chunk.len())?;
            if status != 200 {
                text.extend_from_slice(&chunk);
            }
        }
        if now >= from {
            stats.record(now.elapsed(), status, || String::from_utf8_lossy(&text).into_owned());
        }
    }
    Ok(stats)
}
