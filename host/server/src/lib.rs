//! The Leaky Tokens host: configuration, the HTTP API, services and the `leaky` command.
//!
//! Today it carries the operator's policy tools (`leaky policy check|simulate`); the REST
//! service builds on the same engine.

pub mod cli;
