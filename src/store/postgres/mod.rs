//! The multi-node backend: one PostgreSQL database shared by every sessiond node. Each node's
//! group-commit writer owns one connection; a pool serves reads. Nodes agree through the
//! database only: the append lock orders the log, the unique constraint settles races on a
//! stream (the first signing key is created under the append lock), advisory locks elect who
//! runs a job, and NOTIFY tells followers on other nodes that the log moved.

mod locks;
mod rows;
mod write_session;

pub use locks::HeldJobLock;
pub use write_session::{PostgresWriteSession, PostgresWriter};

use crate::store::StoreError;
use crate::store::dispatch::tables::Tables;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use tokio::sync::watch;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store. Its reads and writes through the pool are the shared [`Tables`]
/// (reached through `Deref`); what is PostgreSQL's own is here.
#[derive(Clone)]
pub struct PostgresStore {
    tables: Tables<Postgres>,
    options: PgConnectOptions,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies pending migrations. Several nodes may do
    /// this at once: sqlx runs migrations under an advisory lock of its own.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("sessiond");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // While the database is out of reach a read fails after this (503 `unavailable`)
            // rather than after sqlx's 30 s default, which would outlast the request timeout.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStore {
            tables: Tables::new(pool),
            options,
        })
    }

    /// The writer's session; its connection is opened by its first transaction.
    pub async fn write_session(&self) -> Result<PostgresWriteSession, StoreError> {
        // A batch never idles inside its transaction; if a node stalls there (paused VM, lost
        // network), the server ends the transaction so the append lock it holds does not stop
        // every other node's writer for longer than this.
        let options = self
            .options
            .clone()
            .options([("idle_in_transaction_session_timeout", "10s")]);
        let writer = PostgresWriter::new(options);
        Ok(PostgresWriteSession::new(writer, self.head().await?)
            .with_vault(self.tables.vault.clone())
            .with_reads(self.tables.pool.clone()))
    }

    /// An empty store in a schema of its own in the same database (`sessiond_verify_…`, with
    /// every migration applied), for `events verify` to replay the log into. Dropped by
    /// [`PostgresStore::drop_scratch`].
    pub async fn scratch(&self) -> Result<(PostgresStore, String), StoreError> {
        let schema = format!("sessiond_verify_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&self.pool)
            .await?;
        let options = self
            .options
            .clone()
            .options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            self.drop_scratch(&schema).await?;
            return Err(e.into());
        }
        Ok((
            PostgresStore {
                tables: Tables::new(pool),
                options,
            },
            schema,
        ))
    }

    pub async fn drop_scratch(&self, schema: &str) -> Result<(), StoreError> {
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The job's lock if no other node holds it.
    pub async fn try_job_lock(&self, job: &str) -> Result<Option<HeldJobLock>, StoreError> {
        HeldJobLock::try_take(&self.pool, job).await
    }

    /// `local` (this node's writer) merged with every node's commit notifications.
    pub async fn follow_commits(
        &self,
        local: watch::Receiver<i64>,
    ) -> Result<watch::Receiver<i64>, StoreError> {
        locks::follow_commits(self.pool.clone(), local).await
    }
}

impl std::ops::Deref for PostgresStore {
    type Target = Tables<Postgres>;

    fn deref(&self) -> &Tables<Postgres> {
        &self.tables
    }
}
