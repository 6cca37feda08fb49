//! Databases for the store's tests: a SQLite file in a temporary directory, and a fresh
//! database on the real PostgreSQL.
//!
//! PostgreSQL is `LEAKY_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! each test creates a database of its own there and drops it after. Without PostgreSQL the
//! tests fail, unless `LEAKY_TEST_POSTGRES=absent` declares it absent; then they say they skipped.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use leaky_store::events::{Event, Outcome};
use leaky_store::ledger::Debit;
use leaky_store::{Database, now_ms, users};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// A database for one test, removed by [`TestDb::finish`].
pub struct TestDb {
    /// The migrated database.
    pub db: Database,
    /// Its URL (to open it again, as a second replica would).
    pub url: String,
    place: Place,
}

enum Place {
    Sqlite(tempfile::TempDir),
    Postgres { server: String, name: String },
}

/// A migrated SQLite database in a temporary directory.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("leaky.db").display());
    let db = Database::open(&url).await.unwrap();
    TestDb { db, url, place: Place::Sqlite(dir) }
}

/// A fresh PostgreSQL database; `None` (after saying so) when PostgreSQL is declared absent.
pub async fn postgres() -> Option<TestDb> {
    let (url, server, name) = fresh_postgres().await?;
    let db = Database::open(&url).await.unwrap();
    Some(TestDb { db, url, place: Place::Postgres { server, name } })
}

/// A fresh, empty PostgreSQL database: `(its URL, the server URL to drop it through, its
/// name)`; `None` (after saying so) when PostgreSQL is declared absent.
pub async fn fresh_postgres() -> Option<(String, String, String)> {
    if std::env::var("LEAKY_TEST_POSTGRES").is_ok_and(|v| v == "absent") {
        eprintln!("SKIPPED: LEAKY_TEST_POSTGRES=absent declares PostgreSQL absent");
        return None;
    }
    let server = std::env::var("LEAKY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {server}: {e} (start it, or set LEAKY_TEST_POSTGRES=absent to skip)")
    });
    let name = format!("leaky_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, _) = server.rsplit_once('/').expect("a URL ending in /database");
    Some((format!("{base}/{name}"), server, name))
}

/// Drops a database made by [`fresh_postgres`].
pub async fn drop_postgres(server: &str, name: &str) {
    let mut admin = PgConnection::connect(server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}

impl TestDb {
    /// Closes the database and removes it.
    pub async fn finish(self) {
        self.db.pool().close().await;
        self.db.readers().close().await;
        if let Place::Postgres { server, name } = &self.place {
            drop_postgres(server, name).await;
        }
    }
}

/// Runs each listed `async fn(&TestDb)` as a test on SQLite and again on PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = $crate::common::sqlite().await;
                    super::$name(&t).await;
                    t.finish().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = $crate::common::postgres().await else { return };
                    super::$name(&t).await;
                    t.finish().await;
                }
            )*
        }
    };
}

/// A user named `name`, created in `db`.
pub async fn user(db: &Database, name: &str) -> Uuid {
    users::create(db.pool(), name, &format!("{name}@example.com"), "hash", &["user"]).await.unwrap().id
}

/// A one-token debit of `user` (in `org`, whose quota period it does not know) for `openai`,
/// with its usage event; `limit` is the user's limit should the debit create the quota row.
pub fn debit(user: Uuid, org: Option<Uuid>, limit: i64) -> Debit {
    let now = now_ms();
    Debit {
        entry_id: Uuid::now_v7(),
        user_id: user,
        org: org.map(|id| (id, None)),
        provider: "openai".into(),
        tokens: 1,
        cost: 1,
        user_period_start: 0,
        user_limit: limit,
        request_id: None,
        event: Event {
            id: Uuid::now_v7(),
            outcome: Outcome::Allowed,
            user_id: user,
            org_id: org,
            provider: "openai".into(),
            model: None,
            tokens: 1,
            occurred_at: now,
        },
    }
}

/// The counters the store increments, for a test that installs it as the process's recorder
/// (`metrics::set_global_recorder`; the store counts on threads of its own).
#[derive(Clone, Default)]
pub struct Counters(Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = Arc::clone(self.0.lock().unwrap().entry(key.name().to_string()).or_default());
        Counter::from_arc(count)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
