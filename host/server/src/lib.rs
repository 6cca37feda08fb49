//! The Leaky Tokens host: configuration, the HTTP API, services and the `leaky` command.
//!
//! `Application::build(settings)` wires the engine, the store and the routes; `main` only parses
//! the command line. Layout: [`settings`] (one layered struct), [`auth`], [`routes`] (HTTP),
//! [`services`] (decisions, purchases, keys), [`error`] (the one mapping of errors to HTTP).

pub mod auth;
pub mod bootstrap;
pub mod cli;
mod coalesce;
pub mod error;
pub mod extract;
mod middleware;
mod request_metrics;
pub mod routes;
pub mod services;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use settings::Settings;
pub use startup::Application;
