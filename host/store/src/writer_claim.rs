//! The embedded database serves one process: the one that holds its claim.
//!
//! On SQLite the service's account book decides every debit and the quota counters are written
//! back from the ledger in batches, replayed at start (docs/04-architecture.md). Both are right
//! only while one process serves the file: a second one would decide from a book of its own, and
//! its start-up replay would write back spend the first still holds pending. So the service
//! claims the file before it opens it: a lock on a file beside it (`<database>-writer.lock`),
//! which the operating system releases when the process ends, however it ends.
//!
//! A process that defers the write-back holds the lock alone ([`Claim::Sole`]). One that writes
//! the counters in every commit (`database.quota_writeback_ms = 0`) holds nothing pending, so
//! such processes may share the lock ([`Claim::Shared`]), as tests that stand two processes on
//! one file in for replicas do; neither kind starts beside the other. Command-line tools that
//! only read or add users claim nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::StoreError;

/// How a process claims an embedded database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Alone: it holds quota spend pending write-back.
    Sole,
    /// Beside other processes that claim it the same way: it writes the counters in every commit.
    Shared,
}

/// This process's claim on an embedded database; released when dropped.
#[derive(Debug)]
pub struct WriterClaim {
    _lock: File,
    path: PathBuf,
}

impl WriterClaim {
    /// Claims the SQLite database at `url` (`sqlite://path[?options]`) as `claim` says, or says
    /// which lock another process holds. An in-memory database needs no claim (`None`).
    pub fn claim(url: &str, claim: Claim) -> Result<Option<Self>, StoreError> {
        let Some(database) = database_file(url) else { return Ok(None) };
        let mut name = database.as_os_str().to_owned();
        name.push("-writer.lock");
        let path = PathBuf::from(name);
        let cannot = |err: std::io::Error| StoreError::InUse(format!("cannot lock {}: {err}", path.display()));
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(cannot)?;
        let locked = match claim {
            Claim::Sole => lock.try_lock(),
            Claim::Shared => lock.try_lock_shared(),
        };
        match locked {
            Ok(()) => Ok(Some(Self { _lock: lock, path })),
            Err(TryLockError::WouldBlock) => Err(StoreError::InUse(format!(
                "another process serves the database {} (it holds {}); the embedded database serves one \
                 process, and replicas share PostgreSQL (database.url)",
                database.display(),
                path.display()
            ))),
            Err(TryLockError::Error(err)) => Err(cannot(err)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file of a `sqlite:` URL; `None` for an in-memory database.
fn database_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?cache=private", dir.path().join("leaky.db").display());
        let first = WriterClaim::claim(&url, Claim::Sole).expect("claims").expect("a file database");
        assert!(first.path().ends_with("leaky.db-writer.lock"), "{}", first.path().display());
        let refused = WriterClaim::claim(&url, Claim::Sole).expect_err("held");
        assert!(refused.to_string().contains("another process serves the database"), "{refused}");
        assert!(WriterClaim::claim(&url, Claim::Shared).is_err(), "not beside a sole writer either");
        drop(first);
        let shared = WriterClaim::claim(&url, Claim::Shared).expect("claims").expect("a file database");
        assert!(WriterClaim::claim(&url, Claim::Shared).expect("shares").is_some());
        assert!(WriterClaim::claim(&url, Claim::Sole).is_err(), "not beside shared writers");
        drop(shared);
        assert!(WriterClaim::claim("sqlite::memory:", Claim::Sole).expect("nothing to claim").is_none());
    }
}
