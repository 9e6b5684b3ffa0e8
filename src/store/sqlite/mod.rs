//! The embedded backend: one SQLite file in WAL mode. A single writer connection (owned by the
//! group-commit writer) appends and projects; a small pool serves reads. The WAL is checkpointed
//! from the pool, never by the writer, so a checkpoint never stalls a commit.

mod log_reader;
mod rows;
#[cfg(test)]
mod tests;
mod write_session;

pub use write_session::{SqliteWriteSession, SqliteWriter};

use crate::store::StoreError;
use crate::store::dispatch::tables::Tables;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite};
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// WAL frames (pages) beyond which the log is started over after a checkpoint.
pub(crate) const WAL_RESTART_FRAMES: i64 = 32_768;
/// Frames a checkpoint may leave behind for the writer to finish (a few batches' worth).
pub(crate) const WAL_LEFTOVER_FRAMES: i64 = 128;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Creates the database file readable and writable by its owner only (0600) before SQLite opens
/// it, and tightens an existing one with its WAL and shared-memory files: they hold password
/// hashes and session state. SQLite gives the `-wal` and `-shm` files it creates the mode of the
/// database file, so they are 0600 too.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::Corrupt(format!("{}: {e}", path.display()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = PathBuf::from(name);
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
        }
    }
    Ok(())
}

/// The SQLite store. Its reads and writes through the pool are the shared [`Tables`] (reached
/// through `Deref`); what is SQLite's own is here.
#[derive(Clone)]
pub struct SqliteStore {
    tables: Tables<Sqlite>,
    options: SqliteConnectOptions,
    path: PathBuf,
    /// Set by the background checkpoint when the WAL is worth starting over; see
    /// [`SqliteStore::checkpoint`].
    wal_restart_due: Arc<AtomicBool>,
    /// Read-only connections for [`SqliteStore::replay_page`].
    log_reader: Arc<log_reader::LogReader>,
}

/// Turns off SQLite's memory statistics, once, before the process's first connection.
///
/// With them on (the bundled library's default), every `sqlite3_malloc` and `sqlite3_free`
/// takes one process-wide mutex to count bytes: the writer's connection thread allocates
/// for each row it writes while the writer drops the rows its reads returned, and profiles
/// showed the writer asleep on that mutex. SQLite recommends them off for speed
/// (`SQLITE_DEFAULT_MEMSTATUS=0`); nothing here reads them. Too late (SQLite already
/// initialised) the call is refused with `SQLITE_MISUSE` and changes nothing.
fn fast_malloc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. sqlite3_config must not run while
        // another thread uses SQLite: it runs once, before this process opens any database
        // (the Once makes a second opener wait), and after initialisation it only refuses.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as c_int)
        };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(rc, "SQLite memory statistics stay on (already initialised)");
        }
    });
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        fast_malloc();
        owner_only(path)?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            // A refresh rewrites a few randomly placed pages (token hash, stream version,
            // session row); each costs a whole page in the WAL, so smaller pages mean fewer
            // bytes per commit and per checkpoint. Rows here fit 2 KiB pages without overflow.
            // Takes effect when the file is created.
            .page_size(2048)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is durable once COMMIT returns (one fsync of the WAL per batch).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run from the pool on a timer; the writer never pays for one.
            .pragma("wal_autocheckpoint", "0")
            // Bytes of WAL file kept when the log starts over after a full checkpoint. Generous:
            // trimming the file is an ftruncate in the writer's commit (12 ms seen under load),
            // so it should happen only after an unusual spike, not on every restart.
            .pragma("journal_size_limit", "536870912")
            .pragma("temp_store", "memory")
            .statement_cache_capacity(128);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // An embedded connection does not go stale; the default ping on every acquire is a
            // round trip to the connection's worker thread for nothing.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            tables: Tables::new(pool),
            options,
            path: path.to_owned(),
            wal_restart_due: Arc::default(),
            log_reader: Arc::new(log_reader::LogReader::new(path.to_owned())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A page of a replay, read on a blocking thread by the log reader, then opened (the data
    /// keys read through the pool, as every read does) and decoded.
    pub async fn replay_page(
        &self,
        after: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<crate::store::ReplayedEvent>, StoreError> {
        let (reader, tables) = (self.log_reader.clone(), self.tables.clone());
        let before = before.unwrap_or(i64::MAX);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            reader.page(after, before, limit, |ids| {
                runtime.block_on(tables.key_states(&ids))
            })
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// A dedicated connection for the writer task (or a rebuild), positioned at the chain head.
    pub async fn write_session(&self) -> Result<SqliteWriteSession, StoreError> {
        // Multi-row statements differ by row count: room for them in the statement cache.
        // A larger page cache than the default 2 MB keeps the index pages that refreshes touch
        // at random (token hashes, stream versions) out of the read() path.
        let options = self
            .options
            .clone()
            .statement_cache_capacity(1024)
            .pragma("cache_size", "-65536");
        let conn = SqliteConnection::connect_with(&options).await?;
        let head = self.head().await?;
        let writer = SqliteWriter::new(conn, self.wal_restart_due.clone());
        Ok(SqliteWriteSession::new(writer, head)
            .with_vault(self.tables.vault.clone())
            .with_reads(self.tables.pool.clone()))
    }

    /// Moves WAL content into the database file without blocking the writer (PASSIVE).
    ///
    /// SQLite starts the WAL over when a write transaction begins with every frame already
    /// checkpointed, which under steady load never happens by itself: frames arrive while the
    /// checkpoint runs. A TRUNCATE would force it, but it takes the write lock and the writer
    /// then sleeps in SQLite's busy handler (steps of up to 100 ms: 180 ms batches at p99.9).
    /// So this only flags that a restart is due; the writer, between two batches, checkpoints
    /// the few frames written since (cheap, right after this pass) and its next transaction
    /// restarts the log.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        // Frames keep arriving while a pass runs; a few passes catch up, each shorter than the
        // last, so the writer is left with little to do.
        for _ in 0..8 {
            let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&self.pool)
                .await?;
            let (busy, log, done): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if busy != 0 || log < WAL_RESTART_FRAMES {
                break;
            }
            if log - done <= WAL_LEFTOVER_FRAMES {
                self.wal_restart_due.store(true, Ordering::Release);
                break;
            }
        }
        Ok(())
    }
}

impl std::ops::Deref for SqliteStore {
    type Target = Tables<Sqlite>;

    fn deref(&self) -> &Tables<Sqlite> {
        &self.tables
    }
}
