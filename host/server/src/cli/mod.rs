//! The `leaky` command's arguments and dispatch.

mod policy_check;
mod policy_client;
mod policy_new;
mod policy_simulate;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};
use policy_client::Operation;
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
    /// Create a guest crate for a new policy on the SDK; it builds as it is.
    New {
        /// The policy's name (1-64 of [a-z0-9-]); also the crate's.
        name: String,
        /// What it starts as: leaky-bucket, token-bucket, fixed-window, sliding-window or
        /// quota-rule.
        #[arg(long)]
        strategy: String,
        /// Where to create the crate's directory (default: here).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK crate (default: guests/sdk here or in a parent directory).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Upload a component as a new version of a module (validated by the server first).
    Upload {
        /// The module.
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        /// A parameter for the server's smoke test, as `name=value`; repeat for each.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List modules, their versions and which is active.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make a version of a module active on every replica.
    Activate {
        /// The module.
        name: String,
        /// The version.
        version: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make the version active before the latest activation active again.
    Rollback {
        /// The module.
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show which module and parameters apply to which provider.
    Bindings {
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// Where the API is and how to authenticate.
#[derive(clap::Args)]
struct RemoteArgs {
    /// The service's base URL.
    #[arg(long, env = "LEAKY_CLI_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin's JWT (from POST /api/v1/auth/login).
    #[arg(long, env = "LEAKY_CLI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An admin's API key.
    #[arg(long, env = "LEAKY_CLI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl RemoteArgs {
    fn remote(self) -> policy_client::Remote {
        policy_client::Remote { url: self.url, token: self.token, api_key: self.api_key }
    }
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
            Command::Policy(PolicyCommand::New { name, strategy, dir, sdk }) => {
                policy_new::run(&name, &strategy, dir.as_deref(), sdk.as_deref())
            }
            Command::Policy(PolicyCommand::Upload { name, file, params, remote }) => {
                policy_client::run(&remote.remote(), Operation::Upload { name: &name, file: &file, params: &params })
            }
            Command::Policy(PolicyCommand::List { remote }) => policy_client::run(&remote.remote(), Operation::List),
            Command::Policy(PolicyCommand::Activate { name, version, remote }) => {
                policy_client::run(&remote.remote(), Operation::Activate { name: &name, version })
            }
            Command::Policy(PolicyCommand::Rollback { name, remote }) => {
                policy_client::run(&remote.remote(), Operation::Rollback { name: &name })
            }
            Command::Policy(PolicyCommand::Bindings { remote }) => {
                policy_client::run(&remote.remote(), Operation::Bindings)
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
