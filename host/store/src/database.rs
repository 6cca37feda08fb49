//! Opening the database (SQLite or PostgreSQL) and applying migrations.
//!
//! Repositories are written once, against sqlx's `Any` driver, in SQL both databases accept
//! (`$N` placeholders, `ON CONFLICT`, `RETURNING`, no `MAX(a, b)`); where the two differ,
//! [`Backend`] says which one is serving.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::StoreError;
use crate::ledger::PendingSpend;
use crate::schema::Schema;

/// The pool type every repository takes.
pub type Pool = AnyPool;

/// Which database serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file: one process owns it.
    Sqlite,
    /// A PostgreSQL server, which several replicas may share.
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Self::Sqlite),
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            _ => Err(StoreError::Schema(format!(
                "database.url must start with sqlite:// or postgres://, not {:?}",
                url.split_once("://").map_or(url, |(scheme, _)| scheme)
            ))),
        }
    }

    /// The backend `conn` talks to.
    pub fn of_connection(conn: &AnyConnection) -> Self {
        if conn.backend_name() == "PostgreSQL" { Self::Postgres } else { Self::Sqlite }
    }
}

/// How many connections a PostgreSQL pool keeps open at most.
const POSTGRES_CONNECTIONS: u32 = 16;
/// Connections of the bulk pool ([`Database::bulk`]): the analytics consumer loads one batch at a
/// time, and a report's roll-up never uses them.
const BULK_CONNECTIONS: u32 = 2;

/// A PostgreSQL connection that sat idle in the pool this long is checked with a round trip
/// before it is handed out, and replaced if the server dropped it meanwhile (a restart, an idle
/// timeout). One in steady use is handed out as it is: under load each group commit took one
/// more round trip for the check, in the serial path every commit waits on (docs/09, "ninth
/// sitting"). sqlx still checks every connection when it comes back to the pool, and closes one
/// whose statement broke it.
pub const CHECK_IDLE_CONNECTIONS_AFTER: Duration = Duration::from_secs(1);

/// The database, with the schema applied.
///
/// On SQLite: one write connection and a pool of readers. SQLite admits one writer at a time,
/// and a writer that finds the database locked sleeps in growing steps (1, 2, 5, 10 ms, ...).
/// Funnelling every write through one connection makes writers queue in the pool instead, so
/// the ledger's group commits never sleep behind the outbox relay; readers (WAL mode) never
/// wait for the writer. On PostgreSQL: one pool for both.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    readers: Pool,
    /// On PostgreSQL, connections of the driver itself, for what the driver-neutral pool
    /// cannot do: bulk loads with `COPY` (the analytics sink). Connected on first use.
    bulk: Option<sqlx::PgPool>,
    backend: Backend,
    /// Quota spend the ledger holds and the counters do not show yet (SQLite only).
    pending: Arc<PendingSpend>,
}

impl Database {
    /// Opens the database at `url` (`sqlite://path`, created if missing, or `postgres://...`)
    /// and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, Schema::Migrate).await
    }

    /// Opens the database at `url`, migrating it or requiring it to be current as `schema`
    /// says; a schema newer than this build is always refused.
    pub async fn open_with(url: &str, schema: Schema) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let db = match backend {
            Backend::Sqlite => {
                let pool = sqlite_pool(url, "rwc", 1).await?;
                crate::schema::ensure(&pool, backend, schema).await?;
                let readers = sqlite_pool(url, "ro", 4).await?;
                Self { pool, readers, bulk: None, backend, pending: Arc::default() }
            }
            Backend::Postgres => {
                let pool = postgres_pool_options(POSTGRES_CONNECTIONS).connect(url).await?;
                crate::schema::ensure(&pool, backend, schema).await?;
                let bulk = postgres_pool_options(BULK_CONNECTIONS).connect_lazy(url)?;
                Self { readers: pool.clone(), pool, bulk: Some(bulk), backend, pending: Arc::default() }
            }
        };
        Ok(db)
    }

    /// The pool to write (and read) through; on SQLite a single connection.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Connections for queries that should not wait behind writes (reports, the outbox
    /// relay's scan); read-only on SQLite.
    pub fn readers(&self) -> &Pool {
        &self.readers
    }

    /// The driver's own connections for bulk loads (`COPY`): on PostgreSQL only.
    pub(crate) fn bulk(&self) -> Option<&sqlx::PgPool> {
        self.bulk.as_ref()
    }

    /// Quota spend committed to the ledger and not yet written back to the counters; every
    /// reading of a counter adds it ([`crate::quotas::get`]).
    pub fn pending(&self) -> &Arc<PendingSpend> {
        &self.pending
    }

    /// Which database serves.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether other processes may write this database too (so this process's in-memory
    /// view of quotas can be behind).
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.readers).await.is_ok()
    }
}

/// The settings of every PostgreSQL pool: `connections` at most, each checked with a round trip
/// only when it has been idle for [`CHECK_IDLE_CONNECTIONS_AFTER`] or more.
fn postgres_pool_options<DB: sqlx::Database>(connections: u32) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(connections)
        .test_before_acquire(false)
        .before_acquire(|conn: &mut DB::Connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_CONNECTIONS_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .acquire_timeout(Duration::from_secs(10))
}

/// A pool on the SQLite file at `url`, opened in `mode` (`rwc`: read-write, created if
/// missing; `ro`: read-only): WAL journal, every commit on disk before anyone is answered,
/// foreign keys on, a 10 s wait for a lock, and, on the writers, temporary storage in memory.
///
/// The writers' temporary storage is mostly the statement journal: the copy SQLite keeps of
/// each page a statement changes inside a transaction, so that the statement alone can be
/// undone. A group commit's upsert of the quota counters changes a few hundred pages of
/// `quotas`; past 64 KiB SQLite spilled that copy to a temporary file, a `pwrite` per page,
/// which was a tenth of the writer thread's time under load (docs/09-performance.md). In memory
/// it is a copy per page, freed when the statement ends. The read-only connections keep
/// temporary files: a report's sort may be large.
async fn sqlite_pool(url: &str, mode: &'static str, connections: u32) -> Result<Pool, StoreError> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}mode={mode}");
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        // A connection to a local file does not go stale the way a socket does; pinging it
        // before every use would cost a round trip to its worker thread per transaction.
        .test_before_acquire(false)
        .after_connect(move |conn: &mut AnyConnection, _| {
            Box::pin(async move {
                if mode != "ro" {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA temp_store = MEMORY").await?;
                }
                conn.execute("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000")
                    .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    Ok(pool)
}

/// Begins a transaction on `pool` that a caller cancelled half-way cannot leave open.
///
/// On SQLite it is `BEGIN IMMEDIATE`: every transaction of ours writes, and one that started
/// reading would find the database locked when it came to write after another writer.
///
/// sqlx's PostgreSQL `begin` sends `BEGIN` and, if its future is dropped before the answer
/// arrives, returns the connection to the pool inside a transaction nobody will end: every later
/// statement on that connection would be part of it, never committed. Run on a task of its
/// own, the `begin` always finishes; a transaction whose caller is gone is then dropped the
/// ordinary way, which rolls it back.
pub async fn begin(pool: &Pool) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    let pool = pool.clone();
    let begin = async move {
        match Backend::of_url(pool.connect_options().database_url.as_str()) {
            Ok(Backend::Sqlite) => pool.begin_with("BEGIN IMMEDIATE").await,
            _ => pool.begin().await,
        }
    };
    run_detached(begin).await
}

/// Runs `work` on a task of its own to its end, whether or not the caller still waits for it,
/// so a caller that gives up half-way cannot leave a statement or a transaction half-done on a
/// pooled connection; a panic in it is the caller's again.
pub(crate) async fn run_detached<T, F>(work: F) -> Result<T, sqlx::Error>
where
    F: std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(sqlx::Error::WorkerCrashed),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
