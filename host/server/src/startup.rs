//! Building and running the application: `Application::build(settings)` wires every part on the
//! configured backends; `run_until_stopped` serves until Ctrl-C or SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use leaky_engine::{EngineConfig, PolicyEngine};
use leaky_store::analytics::{AnalyticsSink, SqlAnalytics};
use leaky_store::bus::{EventBus, InProcessBus};
use leaky_store::commit_feed::CommitFeed;
use leaky_store::ledger::{Arbiter, LedgerWriter};
use leaky_store::schema::Schema;
use leaky_store::writer_claim::{Claim, WriterClaim};
use leaky_store::{Backend, Database};
use tokio::net::TcpListener;

use crate::auth::{JwtKeys, hash_password, load_or_generate_jwt_secret};
use crate::coalesce::CoalescingListener;
use crate::services::accounts::{Accounts, BookLimits};
use crate::services::api_keys::ApiKeys;
use crate::services::consume::ConsumeService;
use crate::services::login_limiter::LoginLimiter;
use crate::services::policies::{BoundPolicy, load_module};
use crate::services::saga::Sagas;
use crate::services::shared_rate::SharedRate;
use crate::settings::{AnalyticsBackend, KafkaSettings, RedisSettings, Settings, WhenUnavailable};
use crate::state::{AppState, Shared};
use leaky_store::cassandra::CassandraAnalytics;
use leaky_store::kafka::{KafkaBus, KafkaConfig};
use leaky_store::rate_state::breaker::CircuitBreaker;
use leaky_store::rate_state::guarded::Guarded;
use leaky_store::rate_state::redis::RedisRateState;

/// A built application, bound to its port.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    state: AppState,
}

impl Application {
    /// Opens the database, loads the policies, starts the ledger writer and the outbox relay,
    /// resumes unfinished purchases, and binds `server.addr` (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
        let schema = if settings.database.migrate_on_start { Schema::Migrate } else { Schema::RequireCurrent };
        let url = settings.database_url();
        // One process serves an embedded database: claimed before anything opens it.
        let writer_claim = match Backend::of_url(&url)? {
            Backend::Sqlite if settings.database.quota_writeback_ms > 0 => WriterClaim::claim(&url, Claim::Sole)?,
            Backend::Sqlite => WriterClaim::claim(&url, Claim::Shared)?,
            Backend::Postgres => None,
        };
        let db = Database::open_with(&url, schema).await.context("cannot open the database")?;
        let engine = PolicyEngine::new(EngineConfig {
            cache_dir: Some(
                settings.policies.cache_dir.clone().unwrap_or_else(|| settings.data_dir.join("compile-cache")),
            ),
            ..EngineConfig::default()
        })?;
        let policies = crate::services::policies::start(engine.clone(), db.clone(), &settings).await?;
        let logins = LoginLimiter::new(login_policy(&engine, &settings)?);

        // The recorder first: the services register their counters with it as they start.
        let metrics = crate::telemetry::metrics_handle();
        crate::telemetry::spawn_metrics_upkeep(metrics.clone(), crate::telemetry::METRICS_UPKEEP_EVERY);
        let committed = Arc::new(CommitFeed::new());
        // On a database replicas share, the database decides quotas; on this process's own,
        // its account book does.
        let arbiter = if db.is_shared() { Arbiter::Database } else { Arbiter::Caller };
        let writeback_every = std::time::Duration::from_millis(settings.database.quota_writeback_ms);
        let ledger = LedgerWriter::start(&db, arbiter, writeback_every, Arc::clone(&committed))
            .await
            .context("cannot start the ledger writer")?;
        let analytics = analytics_sink(&settings, &db).await?;
        let bus = event_bus(&settings.kafka, &analytics).await?;
        leaky_store::outbox::spawn_relay(db.clone(), bus, committed);
        let keep_published = std::time::Duration::from_secs(settings.database.outbox_keep_published_seconds);
        leaky_store::outbox::spawn_pruner(db.clone(), keep_published, leaky_store::outbox::PRUNE_EVERY);

        let defaults = settings.clone();
        let accounts = Arc::new(Accounts::new(
            db.clone(),
            move |provider| defaults.default_quota(provider),
            BookLimits {
                sweep_at: settings.quota.book_sweep_at,
                idle: std::time::Duration::from_secs(settings.quota.book_idle_seconds),
            },
        ));
        let shared = shared_rate_state(&settings.redis).await?;
        let consume = Arc::new(ConsumeService::new(Arc::clone(&accounts), Arc::clone(&policies), ledger, shared));
        let sagas = Arc::new(Sagas::new(db.pool().clone(), Arc::clone(&accounts)));
        let secret = load_or_generate_jwt_secret(settings.auth.jwt_secret.as_ref(), &settings.data_dir)?;
        let jwt = JwtKeys::new(
            secret.expose().as_bytes(),
            &settings.auth.jwt_issuer,
            &settings.auth.jwt_audience,
            settings.auth.jwt_ttl_seconds,
        );

        let state = AppState::new(Shared {
            settings: Arc::new(settings),
            api_keys: Arc::new(ApiKeys::new(db.pool().clone())),
            db,
            engine,
            policies,
            accounts,
            consume,
            sagas: Arc::clone(&sagas),
            jwt: Arc::new(jwt),
            logins: Arc::new(logins),
            analytics,
            metrics,
            dummy_hash: Arc::new(hash_password("not a real password".into()).await?),
            writer_claim,
        });
        let resumed = sagas.resume_pending().await.map_err(|e| anyhow::anyhow!("resuming purchases: {e}"))?;
        if resumed > 0 {
            tracing::info!(resumed, "finished purchases left pending by the previous run");
        }
        crate::bootstrap::admin_from_env(&state).await?;

        let listener = TcpListener::bind(state.settings.server.addr)
            .await
            .with_context(|| format!("cannot listen on {}", state.settings.server.addr))?;
        let router = crate::middleware::wrap(crate::routes::router(), state.clone());
        Ok(Self { listener, router, state })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state (for tests and tools).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until Ctrl-C or SIGTERM, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "leaky-tokens listening");
        axum::serve(CoalescingListener(self.listener), self.router).with_graceful_shutdown(shutdown_signal()).await?;
        Ok(())
    }
}

/// The login limiter's policy: a token bucket of `auth.login_burst` attempts per username,
/// refilled at one per `auth.login_refill_seconds`.
fn login_policy(engine: &PolicyEngine, settings: &Settings) -> anyhow::Result<BoundPolicy> {
    let refill = settings.auth.login_refill_seconds;
    if !(1..=1000).contains(&refill) {
        anyhow::bail!("auth.login_refill_seconds must be between 1 and 1000, got {refill}");
    }
    let params = vec![
        ("capacity".to_string(), settings.auth.login_burst.max(1).to_string()),
        ("refill_rate_per_second".to_string(), (1.0 / refill as f64).to_string()),
    ];
    let limiter = load_module(engine, &settings.policies.dir, "token-bucket")?;
    BoundPolicy::bind("token-bucket", 0, limiter, params)
}

/// The analytics store: the service's SQL database, or Cassandra/ScyllaDB.
async fn analytics_sink(settings: &Settings, db: &Database) -> anyhow::Result<Arc<dyn AnalyticsSink>> {
    Ok(match settings.analytics.backend {
        AnalyticsBackend::Sql => {
            let sink = SqlAnalytics::new(db);
            sink.keep_rolled_up();
            Arc::new(sink)
        }
        AnalyticsBackend::Cassandra => {
            let c = &settings.cassandra;
            let sink = CassandraAnalytics::connect(&c.nodes, &c.keyspace, c.replication_factor)
                .await
                .with_context(|| format!("cannot use Cassandra at {} (cassandra.nodes)", c.nodes))?;
            tracing::info!(nodes = %c.nodes, keyspace = %c.keyspace, "analytics go to Cassandra");
            Arc::new(sink)
        }
    })
}

/// The in-process bus feeding the analytics sink, or, when `kafka.brokers` is set, Kafka (and,
/// if this replica takes part, a member of the analytics consumer group feeding the sink).
async fn event_bus(settings: &KafkaSettings, analytics: &Arc<dyn AnalyticsSink>) -> anyhow::Result<Arc<dyn EventBus>> {
    let Some(brokers) = &settings.brokers else {
        return Ok(Arc::new(InProcessBus::new(vec![Arc::clone(analytics)])));
    };
    let config = KafkaConfig { brokers: brokers.clone(), topic_prefix: settings.topic_prefix.clone() };
    let bus = KafkaBus::connect(config.clone())
        .await
        .with_context(|| format!("cannot use Kafka at {brokers} (kafka.brokers)"))?;
    if settings.consume_analytics {
        leaky_store::kafka::spawn_analytics_consumer(&config, &settings.group_id, Arc::clone(analytics))?;
    }
    tracing::info!(%brokers, consume_analytics = settings.consume_analytics, "events go through Kafka");
    Ok(Arc::new(bus))
}

/// The rate state shared by replicas, when `redis.url` is set.
async fn shared_rate_state(settings: &RedisSettings) -> anyhow::Result<Option<SharedRate>> {
    let Some(url) = &settings.url else { return Ok(None) };
    let redis = RedisRateState::connect(url, &settings.key_prefix)
        .await
        .with_context(|| format!("cannot reach Redis at {url} (redis.url)"))?;
    let breaker = CircuitBreaker::new(
        "redis",
        settings.breaker_failures,
        std::time::Duration::from_millis(settings.breaker_cooldown_ms),
    );
    let guarded = Guarded::new(redis, breaker, std::time::Duration::from_millis(settings.timeout_ms));
    let fail_open = settings.when_unavailable == WhenUnavailable::FailOpen;
    tracing::info!(%url, fail_open, "rate state is shared through Redis");
    Ok(Some(SharedRate::new(Arc::new(guarded), fail_open)))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
