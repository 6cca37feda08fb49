//! `cargo xtask bench-http`: the consume load benchmark of the service, on embedded defaults, on
//! the backends the environment names (the servers inherit it: `LEAKY_DATABASE__URL`,
//! `LEAKY_REDIS__URL`, ...), or with `--distributed` on PostgreSQL, Redis and a broker set up
//! afresh for each run (`load/distributed.rs`).
//!
//! It builds the release binary, seeds users with `leaky admin create-users`, starts
//! `leaky serve` (or `--replicas N` of them on consecutive ports, the connections spread over
//! them) on a fresh data directory, and drives `POST /api/v1/tokens/consume` (one token for a
//! different user each time, round-robin over all of them) from keep-alive HTTP/1.1
//! connections for a fixed time, as a gateway acting for its users would; with `--http2`, over
//! a few HTTP/2 connections carrying many requests each (`load/http2.rs`). It prints requests
//! per second, the status counts and latency percentiles, and what the servers used per request
//! (CPU time and bytes written to storage, from `/proc`), and what the whole machine's CPUs
//! spent per request and on which commands (the load generator, and on the distributed setup
//! the database, cache and broker, share the machine), and whether the work a consume leaves
//! behind (its event relayed, then recorded by analytics) kept pace (`load/backlog.rs`). The
//! client is a minimal raw HTTP/1.1 writer on a single-threaded runtime so that most of the CPU
//! is left to the server.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{cargo, run, usage};

mod backlog;
mod distributed;
mod http2;

/// How the load generator talks to the servers.
#[derive(Clone, Copy)]
pub enum Protocol {
    /// One request at a time on each keep-alive connection.
    Http1,
    /// Cleartext HTTP/2 (prior knowledge), `streams` requests at once on each connection.
    Http2 { streams: usize },
}

/// The most requests the server takes at once on one HTTP/2 connection (hyper's default).
pub const MAX_STREAMS: usize = 200;

/// Benchmark settings.
#[derive(Clone)]
pub struct Load {
    pub users: u32,
    pub connections: usize,
    pub protocol: Protocol,
    pub seconds: u64,
    pub port: u16,
    pub replicas: u16,
    pub binary: Option<PathBuf>,
    /// Each run on backends of its own: PostgreSQL, Redis and a broker ([`distributed`]).
    pub distributed: bool,
}

/// What one run measured: requests per second, and per request the servers' CPU and bytes
/// written and the whole machine's CPU (`None` where `/proc` could not be read).
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub requests_per_second: f64,
    pub server_us: Option<f64>,
    pub written_bytes: Option<f64>,
    pub machine_us: Option<f64>,
    /// The CPU the PostgreSQL processes used per request, us (when they used at least the share
    /// of a core the machine line lists a command from).
    pub postgres_us: Option<f64>,
}

/// Whether the environment points the servers at PostgreSQL, the database replicas share (and
/// that a run cannot start afresh on its own).
pub fn on_postgres() -> bool {
    std::env::var("LEAKY_DATABASE__URL").is_ok_and(|url| url.starts_with("postgres"))
}

pub fn bench(root: &Path, target_dir: &Path, load: &Load) -> Result<Measured> {
    let leaky = match &load.binary {
        Some(binary) => binary.clone(),
        None => {
            run(cargo(root).args(["build", "--release", "--quiet", "--package", "leaky-server", "--bin", "leaky"]))?;
            target_dir.join("release/leaky")
        }
    };
    let data = std::env::temp_dir().join(format!("leaky-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    if load.distributed && on_postgres() {
        bail!("--distributed gives each run a database of its own: unset LEAKY_DATABASE__URL");
    }
    if load.replicas > 1 && !on_postgres() && !load.distributed {
        bail!(
            "--replicas {} needs a database they share: --distributed, or LEAKY_DATABASE__URL=postgres://...",
            load.replicas
        );
    }
    // Dropped last, after the servers have stopped.
    let backends = if load.distributed { Some(distributed::Backends::start()?) } else { None };
    let env = |cmd: &mut Command| {
        if let Some(backends) = &backends {
            cmd.envs(backends.env.iter().map(|(name, value)| (name, value)));
        }
        cmd.current_dir(root)
            .env("LEAKY_DATA_DIR", &data)
            // Replicas must accept each other's tokens.
            .env("LEAKY_AUTH__JWT_SECRET", "bench-only-secret-shared-by-every-replica")
            .env("LEAKY_POLICIES__DIR", root.join("policies"))
            .env("LEAKY_LOG", "warn")
            .env("LEAKY_TELEMETRY__LOG_FORMAT", "json");
    };
    let with_password = |args: &[&str]| -> Result<String> {
        let mut cmd = Command::new(&leaky);
        env(&mut cmd);
        let mut child = cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(b"bench password\n")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("leaky {args:?} failed");
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    println!("seeding {} users ...", load.users);
    with_password(&["admin", "create", "--username", "benchadmin", "--password-stdin"])?;
    let count = load.users.to_string();
    let users: Vec<String> =
        with_password(&["admin", "create-users", "--count", &count, "--prefix", "benchuser", "--password-stdin"])?
            .lines()
            .map(String::from)
            .collect();

    let addrs: Vec<String> = (0..load.replicas).map(|n| format!("127.0.0.1:{}", load.port + n)).collect();
    let mut servers = Vec::new();
    for addr in &addrs {
        let mut cmd = Command::new(&leaky);
        env(&mut cmd);
        servers.push(cmd.env("LEAKY_SERVER__ADDR", addr).arg("serve").stdout(Stdio::null()).spawn()?);
    }
    let pids: Vec<u32> = servers.iter().map(std::process::Child::id).collect();
    let result =
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(drive(load, addrs, users, &pids));
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn drive(load: &Load, addrs: Vec<String>, users: Vec<String>, pids: &[u32]) -> Result<Measured> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in &addrs {
        loop {
            if let Ok((200, _)) = request(addr, "GET", "/health/ready", None, "").await {
                break;
            }
            if Instant::now() > deadline {
                bail!("the server at {addr} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let addr = &addrs[0];
    let (status, body) =
        request(addr, "POST", "/api/v1/auth/login", None, r#"{"username":"benchadmin","password":"bench password"}"#)
            .await?;
    if status != 200 {
        bail!("login failed: {status} {body}");
    }
    let login: serde_json::Value = serde_json::from_str(&body)?;
    let token = login["accessToken"].as_str().context("no token")?.to_string();

    let warm_up = Duration::from_secs(2);
    let measure = Duration::from_secs(load.seconds);
    let in_flight = match load.protocol {
        Protocol::Http1 => format!("{} HTTP/1.1 connections", load.connections),
        Protocol::Http2 { streams } => format!("{} HTTP/2 connections of {streams} streams", load.connections),
    };
    println!(
        "{in_flight} over {} replica(s), {} users, {}s warm-up, {}s measured ...",
        addrs.len(),
        users.len(),
        warm_up.as_secs(),
        load.seconds
    );
    let start = Instant::now();
    let (from, until) = (start + warm_up, start + warm_up + measure);
    let tasks: Vec<_> = match load.protocol {
        Protocol::Http1 => {
            // Every request is built before the clock starts: one per user, sent as it is.
            let requests: Arc<Vec<Vec<u8>>> = Arc::new(
                users
                    .iter()
                    .map(|user| http_request("POST", "/api/v1/tokens/consume", Some(&token), &consume_body(user)))
                    .collect(),
            );
            (0..load.connections)
                .map(|c| {
                    let (addr, requests) = (addrs[c % addrs.len()].clone(), Arc::clone(&requests));
                    tokio::spawn(async move { worker(&addr, &requests, c, from, until).await })
                })
                .collect()
        }
        Protocol::Http2 { streams } => {
            let requests = Arc::new(http2::Requests::new(&token, users.iter().map(|user| consume_body(user)))?);
            (0..load.connections)
                .map(|c| {
                    let (addr, requests) = (addrs[c % addrs.len()].clone(), Arc::clone(&requests));
                    tokio::spawn(
                        async move { http2::connection(&addr, requests, streams, c * streams, from, until).await },
                    )
                })
                .collect()
        }
    };
    tokio::time::sleep_until((start + warm_up).into()).await;
    let (before, machine_before) = (usage::read_all(pids), usage::machine());
    tokio::time::sleep_until((start + warm_up + measure).into()).await;
    let (after, machine_after) = (usage::read_all(pids), usage::machine());
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await??);
    }
    let Stats { mut latencies, statuses, samples } = stats;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let total = latencies.len() as f64;
    let mut measured = Measured {
        requests_per_second: total / measure.as_secs_f64(),
        server_us: None,
        written_bytes: None,
        machine_us: None,
        postgres_us: None,
    };
    println!("requests:   {}", latencies.len());
    println!("throughput: {:.0} req/s", measured.requests_per_second);
    println!("statuses:   {statuses:?}");
    for (status, body) in &samples {
        println!("  one {status}: {body}");
    }
    println!(
        "latency:    p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
    if let (Some(before), Some(after)) = (before, after)
        && total > 0.0
    {
        let server_us = (after.cpu_seconds - before.cpu_seconds) * 1e6 / total;
        let written_bytes = (after.write_bytes - before.write_bytes) as f64 / total;
        measured.server_us = Some(server_us);
        measured.written_bytes = Some(written_bytes);
        println!(
            "server:     {server_us:.1} us CPU and {written_bytes:.0} bytes written to storage per request ({:.2} cores)",
            (after.cpu_seconds - before.cpu_seconds) / measure.as_secs_f64()
        );
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        println!(
            "memory:     {:.0} MiB resident at the start of the measured seconds, {:.0} MiB at the end",
            mib(before.resident_bytes),
            mib(after.resident_bytes)
        );
    }
    let seconds = measure.as_secs_f64();
    let (busy, commands) = machine_before.used_until(&machine_after, 0.05 * seconds);
    if total > 0.0 && busy > 0.0 {
        let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
        let shares: Vec<String> = commands.iter().map(|(name, used)| format!("{name} {:.2}", used / seconds)).collect();
        let machine_us = busy * 1e6 / total;
        measured.machine_us = Some(machine_us);
        measured.postgres_us = commands.iter().find(|(name, _)| name == "postgres").map(|(_, used)| used * 1e6 / total);
        println!(
            "machine:    {:.2} of {cores} cores busy, {machine_us:.1} us of CPU per request; cores by command: {}",
            busy / seconds,
            shares.join(", ")
        );
    }
    if let Err(err) = backlog::report(&addrs).await {
        println!("kept up:    the servers' counters could not be read: {err:#}");
    }
    Ok(measured)
}

fn ms(micros: u32) -> f64 {
    f64::from(micros) / 1000.0
}

/// The consume request's body for one user.
fn consume_body(user: &str) -> String {
    format!(r#"{{"userId":"{user}","provider":"openai","tokens":1}}"#)
}

/// Each sender steps through the users at this stride: a prime, so concurrent senders spread
/// over them.
const USER_STRIDE: usize = 7919;

/// What some requests measured: their latencies (us), the count of each status, and the body
/// of the first answer of each status other than 200.
#[derive(Default)]
struct Stats {
    latencies: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    samples: BTreeMap<u16, String>,
}

impl Stats {
    /// Counts one answer received `latency` after its request was sent.
    fn record(&mut self, latency: Duration, status: u16, body: impl FnOnce() -> String) {
        self.latencies.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        *self.statuses.entry(status).or_insert(0) += 1;
        if status != 200 && !self.samples.contains_key(&status) {
            self.samples.insert(status, body());
        }
    }

    fn merge(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += count;
        }
        for (status, body) in other.samples {
            self.samples.entry(status).or_insert(body);
        }
    }
}

async fn worker(addr: &str, requests: &[Vec<u8>], first: usize, from: Instant, until: Instant) -> Result<Stats> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(8192);
    let mut stats = Stats::default();
    let mut i = first;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let request = &requests[i % requests.len()];
        i += USER_STRIDE;
        stream.write_all(request).await?;
        let (status, body) = read_response(&mut stream, &mut buf).await?;
        let length = body.end;
        if now >= from {
            stats.record(now.elapsed(), status, || String::from_utf8_lossy(&buf[body]).into_owned());
        }
        buf.drain(..length);
    }
    Ok(stats)
}

/// A whole HTTP/1.1 request, head and body, sent in one write as HTTP clients send it.
fn http_request(method: &str, path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn request(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    stream.write_all(&http_request(method, path, token, body)).await?;
    let (status, body) = read_response(&mut stream, &mut buf).await?;
    Ok((status, String::from_utf8_lossy(&buf[body]).into_owned()))
}

/// Reads one keep-alive HTTP/1.1 response (`Content-Length` bodies only) into `buf`; returns
/// its status and where its body lies in `buf` (the response ends where the body does). It parses only what it needs, without allocating: the
/// load generator shares the machine with the server and should take as little as it can.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, std::ops::Range<usize>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let status: u16 = std::str::from_utf8(head.get(9..12).context("no status")?)?.parse()?;
            let length = head
                .split(|&b| b == b'\n')
                .find_map(|line| {
                    let name = line.get(..15)?;
                    name.eq_ignore_ascii_case(b"content-length:").then(|| &line[15..])
                })
                .map(|value| std::str::from_utf8(value).map(|v| v.trim().parse::<usize>()))
                .transpose()?
                .transpose()?
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-response");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, end + 4..total));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
