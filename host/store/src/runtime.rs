//! The storage runtime: one thread of its own for the ledger writer and the outbox relay.
//!
//! Under load the service's runtime has hundreds of request tasks queued; a writer task woken
//! after each SQLite statement would wait behind all of them, and every request waiting for
//! that group commit with it. On a thread of their own, the writer and the relay are polled as
//! soon as SQLite answers.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;

/// Spawns `future` on the storage runtime (or, if its thread cannot start, the current one).
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();
    match HANDLE.get_or_init(start) {
        Some(handle) => handle.spawn(future),
        None => tokio::spawn(future),
    }
}

fn start() -> Option<Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new().name("leaky-storage".into()).spawn(move || {
        match Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => {
                let _ = sender.send(Some(runtime.handle().clone()));
                runtime.block_on(std::future::pending::<()>());
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot start the storage runtime; using the main one");
                let _ = sender.send(None);
            }
        }
    });
    started.ok().and_then(|_| receiver.recv().ok().flatten())
}
