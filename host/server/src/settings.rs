//! The one settings struct, layered: built-in defaults < `leaky.toml` < `LEAKY_*` environment
//! (`__` separates levels: `database.url` is `LEAKY_DATABASE__URL`). Every key is documented in
//! docs/06-configuration.md. Secrets are wrapped so they never print.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A value that must never reach a log: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// All settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Embedded files: the SQLite database, a generated JWT secret, the compile cache.
    pub data_dir: PathBuf,
    /// The ledger database.
    pub database: DatabaseSettings,
    /// Authentication.
    pub auth: AuthSettings,
    /// The policy set.
    pub policies: PolicySettings,
    /// The default rate policy, under the seed's names.
    pub token: TokenSettings,
    /// Quotas given to new users.
    pub quota: QuotaSettings,
    /// Rate-limiter state shared by replicas.
    pub redis: RedisSettings,
    /// The event bus of a cluster.
    pub kafka: KafkaSettings,
    /// Where analytics events are kept.
    pub analytics: AnalyticsSettings,
    /// The Cassandra/ScyllaDB cluster of `analytics.backend = "cassandra"`.
    pub cassandra: CassandraSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
}

/// `server.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Where the REST API listens.
    pub addr: SocketAddr,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take, ms.
    pub request_timeout_ms: u64,
}

/// `database.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://...`; empty means `sqlite://<data_dir>/leaky.db`.
    pub url: Option<String>,
    /// Apply pending migrations at start (the embedded default). When false, a database whose
    /// schema is behind this build is refused with a message to run `leaky migrate`.
    pub migrate_on_start: bool,
    /// How long published events stay in the outbox before the pruner deletes them.
    pub outbox_keep_published_seconds: u64,
    /// On SQLite, how often the quota counters are written back from the ledger, ms (0: in
    /// every group commit). PostgreSQL writes them in every commit.
    pub quota_writeback_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: None, migrate_on_start: true, outbox_keep_published_seconds: 3600, quota_writeback_ms: 1000 }
    }
}

/// `auth.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 key; empty means generated into `data_dir/jwt_secret` on first start.
    pub jwt_secret: Option<Secret>,
    /// Access token lifetime, seconds.
    pub jwt_ttl_seconds: u64,
    /// The `iss` of issued tokens, checked on every request.
    pub jwt_issuer: String,
    /// The `aud` of issued tokens, checked on every request.
    pub jwt_audience: String,
    /// Failed logins allowed per username in a burst, refilled at one per `login_refill_seconds`.
    pub login_burst: u64,
    /// Seconds per refilled login attempt.
    pub login_refill_seconds: u64,
}

/// `policies.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// The watched policy set: `*.wasm` components and `*.toml` bindings.
    pub dir: PathBuf,
    /// Whether changes to `dir` are applied while running.
    pub watch: bool,
    /// How often `dir` is scanned for changes (a change is applied once it has been stable
    /// for one scan).
    pub watch_interval_ms: u64,
    /// How often the stored policy generation is checked, so every replica converges on a
    /// change made through any of them.
    pub sync_interval_ms: u64,
    /// Longest time an uploaded component may take to compile before it is refused.
    pub compile_timeout_ms: u64,
    /// Where compiled components are cached (default: `compile-cache` in the data directory).
    pub cache_dir: Option<PathBuf>,
}

/// Where analytics events are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnalyticsBackend {
    /// The service's own SQL database.
    Sql,
    /// Cassandra or ScyllaDB (`cassandra.*`).
    Cassandra,
}

/// `analytics.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// `sql` or `cassandra`.
    pub backend: AnalyticsBackend,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self { backend: AnalyticsBackend::Sql }
    }
}

/// `cassandra.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CassandraSettings {
    /// `host:port` list.
    pub nodes: String,
    /// The keyspace (created when missing).
    pub keyspace: String,
    /// Replication factor of a keyspace this service creates.
    pub replication_factor: u32,
}

impl Default for CassandraSettings {
    fn default() -> Self {
        Self { nodes: "127.0.0.1:9042".into(), keyspace: "leaky".into(), replication_factor: 1 }
    }
}

/// `kafka.*`: the event bus of a cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port` list; none keeps the in-process bus.
    pub brokers: Option<String>,
    /// Prepended to every topic name (`leaky.usage.v1`, `leaky.purchases.v1`).
    pub topic_prefix: String,
    /// The analytics consumer group.
    pub group_id: String,
    /// Whether this replica runs a member of the analytics consumer group.
    pub consume_analytics: bool,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self { brokers: None, topic_prefix: String::new(), group_id: "leaky-analytics".into(), consume_analytics: true }
    }
}

/// What a consume does while the shared rate state is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUnavailable {
    /// Refuse with 429 `rate_limit_exceeded` until it is back.
    FailClosed,
    /// Decide on a local limiter with `capacity / replicas` (and rates / replicas).
    FailOpen,
}

/// `redis.*`: rate-limiter state shared by replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://...`; none keeps rate state in this process (right for one replica).
    pub url: Option<String>,
    /// Prefix of every key this service writes in Redis.
    pub key_prefix: String,
    /// `fail-closed` or `fail-open`.
    pub when_unavailable: WhenUnavailable,
    /// How many replicas share the limits (a fail-open local limiter gets a share of each).
    pub replicas: u32,
    /// Deadline of one Redis call.
    pub timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before it lets a probe through.
    pub breaker_cooldown_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "leaky:".into(),
            when_unavailable: WhenUnavailable::FailClosed,
            replicas: 1,
            timeout_ms: 50,
            breaker_failures: 3,
            breaker_cooldown_ms: 1000,
        }
    }
}

/// `token.*` (the seed's names).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// `token.bucket.*`
    pub bucket: BucketSettings,
}

/// `token.bucket.*`: the rate policy of providers without a binding.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketSettings {
    /// Tokens the limiter admits at once.
    pub capacity: u64,
    /// The rate of every strategy: drain, refill, tokens per second.
    pub leak_rate_per_second: f64,
    /// `leaky-bucket`, `token-bucket`, `fixed-window` or `sliding-window`.
    pub strategy: String,
    /// Window length of the window strategies.
    pub window_seconds: u64,
}

/// `quota.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSettings {
    /// Tokens per provider a new user gets.
    pub default_limit: u64,
    /// Per-provider overrides of `default_limit`.
    pub providers: BTreeMap<String, u64>,
    /// Accounts (user and provider) the in-memory book holds before it drops the idle ones
    /// (then again at twice what it kept).
    pub book_sweep_at: usize,
    /// Seconds an account goes unused before the book may drop it.
    pub book_idle_seconds: u64,
}

/// `telemetry.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json`, `pretty`, or `auto` (json when stdout is not a terminal).
    pub log_format: String,
    /// OTLP/gRPC collector (accepted for forward compatibility; traces are not exported yet).
    pub otlp_endpoint: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            data_dir: PathBuf::from("./data"),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            policies: PolicySettings::default(),
            redis: RedisSettings::default(),
            kafka: KafkaSettings::default(),
            analytics: AnalyticsSettings::default(),
            cassandra: CassandraSettings::default(),
            token: TokenSettings::default(),
            quota: QuotaSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self { addr: SocketAddr::from(([127, 0, 0, 1], 8080)), max_body_bytes: 64 * 1024, request_timeout_ms: 30_000 }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_ttl_seconds: 3600,
            jwt_issuer: "leaky-tokens".into(),
            jwt_audience: "leaky-tokens-api".into(),
            login_burst: 10,
            login_refill_seconds: 6,
        }
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./policies"),
            watch: true,
            watch_interval_ms: 200,
            sync_interval_ms: 500,
            compile_timeout_ms: 20_000,
            cache_dir: None,
        }
    }
}

impl Default for BucketSettings {
    fn default() -> Self {
        Self { capacity: 1000, leak_rate_per_second: 10.0, strategy: "leaky-bucket".into(), window_seconds: 60 }
    }
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self { default_limit: 100_000, providers: BTreeMap::new(), book_sweep_at: 65_536, book_idle_seconds: 60 }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { log_format: "auto".into(), otlp_endpoint: None }
    }
}

/// `LEAKY_*` variables that are not settings keys: the log filter, the bootstrap admin, the
/// test suite's `LEAKY_TEST_*` switches and the policy client's `LEAKY_CLI_*`.
const NOT_SETTINGS: &[&str] = &["log", "bootstrap_admin"];
const NOT_SETTINGS_PREFIXES: &[&str] = &["test_", "cli_"];

impl Settings {
    /// Defaults, then `config_file` (if it exists), then the `LEAKY_*` environment.
    pub fn load(config_file: &Path) -> Result<Self, Box<figment::Error>> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(config_file))
            .merge(
                Env::prefixed("LEAKY_")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        !NOT_SETTINGS.contains(&key.as_str())
                            && !NOT_SETTINGS_PREFIXES.iter().any(|prefix| key.starts_with(prefix))
                    })
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)
    }

    /// The database URL, defaulting to a file in the data directory.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("leaky.db").display()))
    }

    /// The quota a new user gets for `provider`.
    pub fn default_quota(&self, provider: &str) -> u64 {
        self.quota.providers.get(provider).copied().unwrap_or(self.quota.default_limit)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
mod tests {
    use super::*;

    #[test]
    fn layers_defaults_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("leaky.toml", "data_dir = \"/srv/leaky\"\n[token.bucket]\ncapacity = 50\n")?;
            jail.set_env("LEAKY_TOKEN__BUCKET__STRATEGY", "token-bucket");
            jail.set_env("LEAKY_SERVER__ADDR", "0.0.0.0:9000");
            jail.set_env("LEAKY_LOG", "debug");
            jail.set_env("LEAKY_BOOTSTRAP_ADMIN", "root:password");
            let s = Settings::load(Path::new("leaky.toml")).map_err(|e| e.to_string())?;
            assert_eq!(s.data_dir, PathBuf::from("/srv/leaky"));
            assert_eq!(s.token.bucket.capacity, 50);
            assert_eq!(s.token.bucket.strategy, "token-bucket");
            assert_eq!(s.token.bucket.leak_rate_per_second, 10.0);
            assert_eq!(s.server.addr.port(), 9000);
            assert_eq!(s.database_url(), "sqlite:///srv/leaky/leaky.db");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print_and_unknown_keys_are_refused() {
        let s = Settings {
            auth: AuthSettings { jwt_secret: Some(Secret::new("hunter2")), ..AuthSettings::default() },
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        figment::Jail::expect_with(|jail| {
            jail.create_file("leaky.toml", "[server]\nadress = \"x\"\n")?;
            assert!(Settings::load(Path::new("leaky.toml")).is_err());
            Ok(())
        });
    }
}
