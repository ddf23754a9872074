//! The PostgreSQL backend behind the store's synchronous calls: its own
//! small runtime holds the connection pool and the notification link, so
//! a call works the same from the gateway's tasks, from blocking threads
//! and from the CLI, which has no runtime at all.

use std::sync::Arc;
use std::time::Duration;

use crate::store::StoreError;
use crate::store::postgres::Postgres;

/// Threads of the store's runtime: its work is waiting on the database.
const THREADS: usize = 2;

pub struct Runner {
    pg: Arc<Postgres>,
    runtime: Option<tokio::runtime::Runtime>,
    /// How long cached checks are trusted after the link is lost.
    pub max_stale: Duration,
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a task of another runtime (the
        // gateway's, at shutdown) must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Runner {
    /// Connects (creating or migrating the schema); with `listen`, also
    /// hears other processes' writes for as long as the runner lives.
    pub fn open(
        url: &str,
        pool_size: usize,
        max_stale: Duration,
        listen: bool,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("tokengate-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start the store's threads: {e}")))?;
        let url = url.to_owned();
        let pg = wait(runtime.handle(), async move {
            Postgres::open(&url, pool_size).await
        })?;
        if listen {
            runtime.spawn(pg.listen());
        }
        Ok(Self {
            pg: Arc::new(pg),
            runtime: Some(runtime),
            max_stale,
        })
    }

    pub fn pg(&self) -> &Postgres {
        &self.pg
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // Taken only in `drop`.
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the runner")
            .handle()
    }

    /// Runs `call` on the store's runtime and blocks this thread for the
    /// answer: for the CLI and the gateway's blocking threads.
    pub fn block<T, F>(&self, call: impl FnOnce(Arc<Postgres>) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        wait(self.handle(), call(self.pg.clone()))
    }

    /// Runs `call` on the store's runtime and awaits it from any other.
    pub async fn run<T, F>(&self, call: impl FnOnce(Arc<Postgres>) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.handle()
            .spawn(call(self.pg.clone()))
            .await
            .unwrap_or(Err(StoreError::Stopped))
    }

    /// Whether cached answers may still be trusted: the link is up, or
    /// down for at most `max_stale`.
    pub fn in_touch(&self) -> Result<(), StoreError> {
        match self.pg.link().down_for() {
            Some(down) if down > self.max_stale => Err(StoreError::OutOfTouch {
                down_secs: down.as_secs(),
            }),
            _ => Ok(()),
        }
    }
}

/// Blocks on `work` spawned onto `handle`: unlike `Handle::block_on`, this
/// works on a thread that already runs another runtime's task.
fn wait<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().unwrap_or(Err(StoreError::Stopped))
}
