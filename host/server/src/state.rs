//! The application state every handler shares.

use std::sync::Arc;

use leaky_engine::PolicyEngine;
use leaky_store::Database;
use leaky_store::analytics::AnalyticsSink;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::JwtKeys;
use crate::services::accounts::Accounts;
use crate::services::api_keys::ApiKeys;
use crate::services::consume::ConsumeService;
use crate::services::login_limiter::LoginLimiter;
use crate::services::policies::PolicyRegistry;
use crate::services::saga::Sagas;
use crate::settings::Settings;

/// Shared state: one pointer, so the router's per-request clone is one atomic increment
/// rather than one per service.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the services.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The services every handler shares.
pub struct Shared {
    /// Settings in force.
    pub settings: Arc<Settings>,
    /// The database.
    pub db: Database,
    /// The policy engine.
    pub engine: PolicyEngine,
    /// The policies in force and their lifecycle.
    pub policies: Arc<PolicyRegistry>,
    /// The in-memory book.
    pub accounts: Arc<Accounts>,
    /// Decisions.
    pub consume: Arc<ConsumeService>,
    /// Purchases.
    pub sagas: Arc<Sagas>,
    /// JWT keys.
    pub jwt: Arc<JwtKeys>,
    /// API keys.
    pub api_keys: Arc<ApiKeys>,
    /// Login attempt limits.
    pub logins: Arc<LoginLimiter>,
    /// Analytics reports.
    pub analytics: Arc<dyn AnalyticsSink>,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// A password hash checked for unknown users, so a wrong username costs what a wrong
    /// password does.
    pub dummy_hash: Arc<String>,
    /// This process's claim on the embedded database (none on PostgreSQL), held while the
    /// service runs.
    pub writer_claim: Option<leaky_store::writer_claim::WriterClaim>,
}
