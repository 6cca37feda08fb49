//! `leaky`: the Leaky Tokens command line. It only parses arguments and dispatches.

use anyhow::Result;
use clap::Parser;
use leaky_server::cli::Cli;

fn main() -> Result<()> {
    Cli::parse().run()
}
