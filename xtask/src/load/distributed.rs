//! `bench-http --distributed`: every run on backends of its own, so that runs compare with each
//! other. A run gets a fresh PostgreSQL database, a Redis key prefix nobody else uses and a tansu
//! broker of its own (in memory, on port 19092). Afterwards the broker is stopped, the database
//! dropped and the keys deleted.
//!
//! A database that already held a run's users and ledger, or a broker that already held a few
//! million events, would make the next run slower than the first (docs/09-performance.md).
//!
//! PostgreSQL is `LEAKY_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`;
//! the run's database is created beside the one it names, with `psql`), and Redis is
//! `LEAKY_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`; keys deleted with `redis-cli`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

use crate::services;

/// The port of each run's broker (apart from the tests' broker on 9092).
const BROKER_PORT: u16 = 19092;

/// One run's backends, removed when dropped.
pub struct Backends {
    admin_url: String,
    database: String,
    redis_url: String,
    key_prefix: String,
    broker: Child,
    /// The settings that point the servers at them.
    pub env: Vec<(&'static str, String)>,
}

impl Backends {
    /// Creates the next run's database and key prefix, and starts its broker.
    pub fn start() -> Result<Self> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let admin_url = std::env::var("LEAKY_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let redis_url = std::env::var("LEAKY_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let database = format!("leaky_bench_{}_{run}", std::process::id());
        let key_prefix = format!("leaky-bench-{}-{run}:", std::process::id());
        let (server, _) = admin_url.rsplit_once('/').context("LEAKY_BENCH_POSTGRES_URL must end in /database")?;
        let database_url = format!("{server}/{database}");

        psql(&admin_url, &format!("CREATE DATABASE {database}"))?;
        let broker = match start_broker() {
            Ok(broker) => broker,
            Err(err) => {
                let _ = psql(&admin_url, &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
                return Err(err);
            }
        };
        let env = vec![
            ("LEAKY_DATABASE__URL", database_url),
            ("LEAKY_REDIS__URL", redis_url.clone()),
            ("LEAKY_REDIS__KEY_PREFIX", key_prefix.clone()),
            ("LEAKY_KAFKA__BROKERS", format!("127.0.0.1:{BROKER_PORT}")),
        ];
        println!("backends: database {database}, Redis keys {key_prefix}*, a broker of its own on port {BROKER_PORT}");
        Ok(Self { admin_url, database, redis_url, key_prefix, broker, env })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.broker.kill();
        let _ = self.broker.wait();
        if let Err(err) = psql(&self.admin_url, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database)) {
            eprintln!("cannot drop the benchmark database {}: {err:#}", self.database);
        }
        if let Err(err) = delete_keys(&self.redis_url, &self.key_prefix) {
            eprintln!("cannot delete the benchmark's Redis keys {}*: {err:#}", self.key_prefix);
        }
    }
}

/// Starts tansu, in memory, on [`BROKER_PORT`]; fails if something answers there already.
fn start_broker() -> Result<Child> {
    if services::answers(BROKER_PORT) {
        bail!("something already listens on 127.0.0.1:{BROKER_PORT}, the port of the benchmark's broker");
    }
    let broker = services::start_tansu(BROKER_PORT, Stdio::null(), Stdio::null())?;
    Ok(broker)
}

/// Runs one SQL command through `psql` on the database at `url`.
fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("cannot run psql (needed by --distributed)")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Deletes the keys under `prefix` through `redis-cli`, in one script.
fn delete_keys(url: &str, prefix: &str) -> Result<()> {
    const SCRIPT: &str = "local keys = redis.call('KEYS', ARGV[1]) for _, key in ipairs(keys) do redis.call('UNLINK', key) end return #keys";
    let out = Command::new("redis-cli")
        .args(["-u", url, "EVAL", SCRIPT, "0", &format!("{prefix}*")])
        .output()
        .context("cannot run redis-cli (needed by --distributed)")?;
    if !out.status.success() {
        bail!("redis-cli: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
