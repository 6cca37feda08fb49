//! `leaky`: the Leaky Tokens command line. It only parses arguments and dispatches.

use anyhow::Result;
use clap::Parser;
use leaky_server::cli::Cli;

/// jemalloc, for Rust and for SQLite alike: the service allocates on many threads at once,
/// where it costs a consume markedly less CPU than glibc's allocator (docs/09-performance.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    Cli::parse().run()
}
