//! `cargo xtask`: the project's chores, so nobody has to remember a shell script.
//!
//! - `cargo xtask guests`: add the `wasm32-wasip2` target when missing and build every policy
//!   component, size-optimised, into `policies/` (hostile fixtures into `guests/fixtures/wasm/`).
//! - `cargo xtask run [-- ARGS]`: build the guests, then run `leaky ARGS` (by default
//!   `leaky serve`: the service on its embedded defaults, on 127.0.0.1:8080).
//! - `cargo xtask test`: build the guests, start the services the tests need when they are
//!   down (Redis), then run the whole workspace's tests.
//! - `cargo xtask bench`: build the guests, then run the criterion benchmarks.
//! - `cargo xtask bench-http`: build the guests and a release server, then drive consume with
//!   a load generator (itself built for release) and print req/s and latency percentiles;
//!   with `--binary A --against B`, the two builds in alternating pairs; with `--http2`, over
//!   a few HTTP/2 connections of many streams each.

mod compare;
mod guests;
mod load;
mod services;
mod usage;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(about = "Leaky Tokens project chores")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build every policy component and hostile fixture.
    Guests,
    /// Build the guests, then run the `leaky` command (`leaky serve` by default).
    Run {
        /// Arguments for `leaky` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the guests, then run every test of the workspace.
    Test {
        /// Extra arguments for the test runner (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the guests and a release server, then load-test consume.
    BenchHttp {
        /// Users to spread the load over.
        #[arg(long, default_value_t = 10_000)]
        users: u32,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Speak HTTP/2 (cleartext, prior knowledge), as a gateway multiplexing its calls over
        /// a few connections does: each connection carries `--streams` requests at once.
        #[arg(long)]
        http2: bool,
        /// Concurrent requests on each HTTP/2 connection.
        #[arg(long, default_value_t = 128, requires = "http2")]
        streams: usize,
        /// Measured seconds (after a 2 s warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Port for the server under test (replica N listens on port + N).
        #[arg(long, default_value_t = 18080)]
        port: u16,
        /// Replicas of the server, the connections spread over them (more than one needs a
        /// shared database: `--distributed`, or `LEAKY_DATABASE__URL=postgres://...`).
        #[arg(long, default_value_t = 1)]
        replicas: u16,
        /// Run on PostgreSQL, Redis and a Kafka-protocol broker on this machine, each run on
        /// backends of its own: a fresh database, its own Redis key prefix and its own broker.
        #[arg(long)]
        distributed: bool,
        /// Benchmark this `leaky` binary instead of building one (to compare builds).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Compare `--binary` with this build: pairs of runs, the order alternating, then the
        /// median ratio of the pairs (embedded defaults, or `--distributed`).
        #[arg(long, requires = "binary")]
        against: Option<PathBuf>,
        /// Pairs of runs for `--against`.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// Build the guests, then run the criterion benchmarks of the engine.
    Bench {
        /// Extra arguments for criterion (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Task::Guests => guests::build(&root),
        Task::Run { args } => {
            guests::build(&root)?;
            leaky(&root, &args)
        }
        Task::Test { args } => {
            guests::build(&root)?;
            services::ensure()?;
            test(&root, &args)
        }
        Task::BenchHttp { .. } if cfg!(debug_assertions) => {
            // The load generator shares the cores with the servers it measures: run it
            // optimised (its dependencies are the release build's, already compiled).
            let mut cmd = cargo(&root);
            cmd.args(["run", "--quiet", "--release", "--package", "xtask", "--"]).args(std::env::args().skip(1));
            run(&mut cmd)
        }
        Task::BenchHttp {
            users,
            connections,
            http2,
            streams,
            seconds,
            port,
            replicas,
            distributed,
            binary,
            against,
            rounds,
        } => {
            guests::build(&root)?;
            let target = guests::target_dir(&root)?;
            if http2 && !(1..=load::MAX_STREAMS).contains(&streams) {
                bail!(
                    "--streams must be 1 to {}: the server takes that many at once per connection",
                    load::MAX_STREAMS
                );
            }
            let protocol = if http2 { load::Protocol::Http2 { streams } } else { load::Protocol::Http1 };
            let load = load::Load { users, connections, protocol, seconds, port, replicas, binary, distributed };
            match (&load.binary, against) {
                (Some(first), Some(second)) => compare::compare(&root, &target, &load, first, &second, rounds),
                _ => load::bench(&root, &target, &load).map(|_| ()),
            }
        }
        Task::Bench { args } => {
            guests::build(&root)?;
            let mut cmd = cargo(&root);
            cmd.args(["bench", "--package", "leaky-engine", "--bench", "decide", "--"]).args(args);
            run(&mut cmd)
        }
    }
}

/// Runs the workspace's tests with cargo-nextest when it is installed, else `cargo test`.
/// nextest does not run doctests, so they run first, and the runner's summary closes the output.
fn test(root: &Path, args: &[String]) -> Result<()> {
    let nextest = Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let mut cmd = cargo(root);
    if nextest {
        run(cargo(root).args(["test", "--workspace", "--doc", "--quiet"]))?;
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    run(cmd.args(args))
}

/// Runs `leaky` with `args`; without any, `leaky serve`.
fn leaky(root: &Path, args: &[String]) -> Result<()> {
    let args: Vec<&str> = if args.is_empty() { vec!["serve"] } else { args.iter().map(String::as_str).collect() };
    let mut cmd = cargo(root);
    cmd.args(["run", "--quiet", "--package", "leaky-server", "--bin", "leaky", "--"]).args(args);
    run(&mut cmd)
}

/// The workspace root: the parent of this crate's directory. `cargo run` says where that is now;
/// the path compiled in is only a fallback, since a build reused from a clone elsewhere (one
/// target directory shared by clones) keeps the path of the clone that built it.
fn workspace_root() -> PathBuf {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// A `cargo` command run from the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs a command, failing with its command line when it does not succeed.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
