//! The `leaky` command's arguments and dispatch.

mod policy_check;
mod policy_simulate;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Leaky Tokens: meter and limit LLM token usage with sandboxed WebAssembly policies.
#[derive(Parser)]
#[command(name = "leaky", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (settings: defaults < the config file < LEAKY_* environment).
    Serve {
        /// The settings file (read when it exists).
        #[arg(long, default_value = "leaky.toml")]
        config: PathBuf,
    },
    /// Apply the database migrations for the configured database, then exit.
    Migrate {
        /// The settings file (read when it exists).
        #[arg(long, default_value = "leaky.toml")]
        config: PathBuf,
    },
    /// Administer users.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin (or make an existing user one), reading the password from stdin.
    Create {
        /// The admin's username.
        #[arg(long)]
        username: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// The settings file (read when it exists).
        #[arg(long, default_value = "leaky.toml")]
        config: PathBuf,
    },
    /// Create many users at once (staging data, load tests), all with the password read from
    /// stdin (hashed once); prints one user id per line.
    CreateUsers {
        /// How many.
        #[arg(long)]
        count: u32,
        /// Usernames are this prefix plus a number.
        #[arg(long)]
        prefix: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// The settings file (read when it exists).
        #[arg(long, default_value = "leaky.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a component as the server would and print what it is: world, imports, exports,
    /// size, sha256 and compile time.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// Replay a trace of requests through a rate-limit component and print every verdict.
    Simulate {
        /// The component (`.wasm`).
        file: PathBuf,
        /// A parameter for `configure`, as `name=value`; repeat for each.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// CSV of `time_ms,tokens` rows (a header row is optional).
        #[arg(long)]
        trace: PathBuf,
    },
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Serve { config } => serve::run(&config),
            Command::Migrate { config } => serve::migrate(&config),
            Command::Admin(AdminCommand::Create { username, password_stdin: _, config }) => {
                serve::create_admin(&config, &username)
            }
            Command::Admin(AdminCommand::CreateUsers { count, prefix, password_stdin: _, config }) => {
                serve::create_users(&config, count, &prefix)
            }
            Command::Policy(PolicyCommand::Check { file }) => policy_check::run(&file),
            Command::Policy(PolicyCommand::Simulate { file, params, trace }) => {
                policy_simulate::run(&file, &params, &trace)
            }
        }
    }
}

/// A policy engine with the default sandbox limits, for the operator tools.
fn engine() -> Result<leaky_engine::PolicyEngine> {
    Ok(leaky_engine::PolicyEngine::new(leaky_engine::EngineConfig::default())?)
}

/// Reads a component file, naming it in the error.
fn read_component(file: &std::path::Path) -> Result<Vec<u8>> {
    use anyhow::Context;
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}
