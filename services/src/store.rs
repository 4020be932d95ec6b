//! The storage layer: one sqlx pool over SQLite (embedded default) or PostgreSQL (at scale),
//! chosen by the database URL — plus, on SQLite, one connection of its own for every write —
//! with migrations for each engine and one transaction helper.
//!
//! Queries are written once in the SQL both engines accept (`$1` placeholders, `BIGINT`
//! microsecond timestamps, `TEXT` for JSON) and run through sqlx's `Any` driver; where the
//! engines differ (locking, `SKIP LOCKED`), code asks [`Store::engine`].
//!
//! Every mutating request runs in exactly one transaction from [`Store::write_tx`], in which the
//! change and its audit record are written together (concurrent CreateDeployment calls share
//! one: `deployments::group_commit`). On SQLite that transaction is begun
//! `IMMEDIATE`, taking the write lock up front: a deferred transaction that reads before it
//! writes fails with `SQLITE_BUSY` when another writer commits in between, which a busy timeout
//! cannot cure.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Connection, Executor, Transaction};
use tracing::instrument;

use crate::config::{DatabaseUrl, redact_url};
use crate::error::Error;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a SQLite writer waits for the write lock before failing with UNAVAILABLE.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL frames (pages; 4 KiB each by default) beyond which the checkpointer resets the WAL.
const WAL_RESET_FRAMES: i64 = 8192;

/// Frames a checkpoint pass may have left uncopied for the reset to follow it: the reset copies
/// them while writers wait (4 MiB, a few milliseconds).
const WAL_RESET_LEFT_FRAMES: i64 = 1024;

/// WAL frames beyond which the checkpointer resets the WAL even though its passes fall behind
/// (128 MiB): the reset then copies more while writers wait, but the WAL stays bounded.
const WAL_FORCE_RESET_FRAMES: i64 = 4 * WAL_RESET_FRAMES;

/// The size a restarted WAL file is cut back to (`journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 4096 * WAL_FORCE_RESET_FRAMES;

/// Frames written during a checkpoint pass few enough for the next to copy while holding
/// writers back (1 MiB, about a millisecond).
const WAL_CATCH_UP_FRAMES: i64 = 256;

/// How long a WAL reset waits for readers still using the WAL before it is put off.
const WAL_RESET_READER_WAIT: Duration = Duration::from_millis(20);

/// The database engine behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Pool settings; see `Config` for their defaults and flags.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: Option<u32>,
    pub acquire_timeout: Duration,
    /// PostgreSQL only: `statement_timeout` of every connection (`None`: the server's default).
    pub statement_timeout: Option<Duration>,
}

impl PoolSettings {
    /// The pool of the server, as configured.
    pub fn of(config: &crate::config::Config) -> Self {
        PoolSettings {
            max_connections: config.db_max_connections,
            acquire_timeout: config.db_acquire_timeout,
            statement_timeout: config.db_statement_timeout,
        }
    }

    /// One connection, for the one-shot operator commands.
    pub fn one_connection(config: &crate::config::Config) -> Self {
        PoolSettings {
            max_connections: Some(1),
            ..Self::of(config)
        }
    }
}

/// A transaction that may write; commit it or it rolls back when dropped. It dereferences to
/// the connection, so queries run on `&mut **tx` (or `&mut *tx` when owned).
///
/// Dropped uncommitted (an error, or a call cancelled by its deadline), it rolls back in a task
/// that keeps this process's write turn until the rollback is done, so the next writer never
/// meets the half-finished transaction (its lock, or its connection still inside it).
#[derive(Debug)]
pub struct WriteTx {
    tx: Option<Transaction<'static, Any>>,
    /// On SQLite, this process's turn to write (see [`Store::write_tx`]); released when the
    /// transaction has ended.
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits the transaction.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.tx.take() {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }

    fn live(&self) -> &Transaction<'static, Any> {
        self.tx
            .as_ref()
            .expect("a WriteTx holds its transaction until commit or drop")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let turn = self.turn.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = tx.rollback().await;
                    drop(turn);
                });
            }
            // No runtime (shutting down): sqlx rolls back on its own when the connection is
            // next used or closed.
            Err(_) => drop(tx),
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        self.live()
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.tx
            .as_mut()
            .expect("a WriteTx holds its transaction until commit or drop")
    }
}

/// The storage handle shared by every service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions begin: on SQLite a pool of one connection of its own, on
    /// PostgreSQL the pool itself.
    writer: AnyPool,
    engine: Engine,
    /// SQLite has one writer at a time. Writers of this process queue here, in order, instead of
    /// in SQLite's busy handler, which sleeps in growing steps and turns contention into
    /// latency spikes of tens of milliseconds. Other processes on the same file still meet the
    /// busy timeout.
    write_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The PostgreSQL URL, for connections outside the pool (LISTEN).
    postgres_url: Option<String>,
    /// This process among the replicas sharing the database (task lease owner).
    instance: std::sync::Arc<str>,
}

/// Why the store could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate the database {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty when the database was already current).
    pub applied: Vec<i64>,
    /// The newest version the database is at now.
    pub current: Option<i64>,
}

impl Store {
    /// Opens a pool to the database. Does not migrate; call [`Store::migrate`].
    pub async fn connect(
        database: &DatabaseUrl,
        settings: &PoolSettings,
    ) -> Result<Self, OpenError> {
        install_default_drivers();
        let (url, engine, default_max) = match database {
            DatabaseUrl::Sqlite(path) => (sqlite_url(path), Engine::Sqlite, 8),
            DatabaseUrl::Postgres(url) => (url.clone(), Engine::Postgres, 16),
        };
        let connect_err = |source| OpenError::Connect {
            url: format!("{database:?}"),
            source,
        };
        let statement_timeout = settings.statement_timeout;
        let options = |max_connections: u32| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .min_connections(1)
                .acquire_timeout(settings.acquire_timeout)
                // sqlx pings a connection before lending it out. For a SQLite file that is one
                // more hop to the connection's worker thread per query (7% of a GetEntity's CPU,
                // measured with perf) and never finds anything; PostgreSQL keeps it, so a
                // connection the server dropped (a restart, an idle timeout) is replaced before a
                // request uses it.
                .test_before_acquire(engine == Engine::Postgres)
                // A connection must never be lent out inside a transaction someone abandoned. sqlx
                // rolls a dropped transaction back lazily, on the connection's worker, so a ping
                // (queued behind that rollback) comes first; a connection still inside one is
                // closed, which ends its transaction.
                .after_release(|conn, _meta| {
                    Box::pin(async move {
                        if !conn.is_in_transaction() {
                            return Ok(true);
                        }
                        conn.ping().await?;
                        Ok(!conn.is_in_transaction())
                    })
                })
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if let (Engine::Postgres, Some(timeout)) = (engine, statement_timeout) {
                            conn.execute(
                                format!("SET statement_timeout = {}", timeout.as_millis()).as_str(),
                            )
                            .await?;
                        }
                        if engine == Engine::Sqlite {
                            // WAL lets readers run beside the one writer; NORMAL sync is durable in
                            // WAL mode except for the last transactions on power loss, not on a crash.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            // Deleted content (destroyed secret versions above all) is overwritten
                            // with zeros instead of lingering in free pages of the file.
                            conn.execute("PRAGMA secure_delete = ON").await?;
                            // Checkpoints run in the background (`Store::start_checkpointer`), not
                            // inside whichever commit crosses the WAL threshold: a checkpoint
                            // fsyncs, and a request must not wait for it. The last connection to
                            // close still checkpoints (SQLite does that by itself), so one-shot
                            // commands leave no WAL behind.
                            conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                            conn.execute(
                                format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}").as_str(),
                            )
                            .await?;
                            conn.execute(
                                format!(
                                    "PRAGMA busy_timeout = {}",
                                    SQLITE_BUSY_TIMEOUT.as_millis()
                                )
                                .as_str(),
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = options(settings.max_connections.unwrap_or(default_max))
            .connect(&url)
            .await
            .map_err(connect_err)?;
        // SQLite's writes all go through one connection: in WAL mode a connection's page cache
        // is emptied whenever another connection has written, so writes spread over the pool
        // began cold, rereading the pages they change; a single writer finds them cached.
        let writer = match engine {
            Engine::Sqlite => options(1).connect(&url).await.map_err(connect_err)?,
            Engine::Postgres => pool.clone(),
        };
        Ok(Store {
            pool,
            writer,
            engine,
            write_turn: Default::default(),
            instance: uuid::Uuid::new_v4().simple().to_string().into(),
            postgres_url: match database {
                DatabaseUrl::Postgres(url) => Some(url.clone()),
                DatabaseUrl::Sqlite(_) => None,
            },
        })
    }

    /// Applies the engine's pending migrations. Running it again on a current database is a no-op.
    #[instrument(skip(self), fields(engine = ?self.engine))]
    pub async fn migrate(&self) -> Result<MigrationReport, OpenError> {
        let migrator = match self.engine {
            Engine::Sqlite => &SQLITE_MIGRATIONS,
            Engine::Postgres => &POSTGRES_MIGRATIONS,
        };
        let migrate_err = |source| OpenError::Migrate {
            url: self.describe(),
            source,
        };
        let before = self.applied_versions().await;
        migrator.run(&self.pool).await.map_err(migrate_err)?;
        let after = self.applied_versions().await;
        let applied: Vec<i64> = after
            .iter()
            .copied()
            .filter(|v| !before.contains(v))
            .collect();
        Ok(MigrationReport {
            applied,
            current: after.iter().copied().max(),
        })
    }

    /// Versions recorded in sqlx's migration table; empty before the first migration.
    async fn applied_versions(&self) -> Vec<i64> {
        sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default()
    }

    /// The engine, for the few queries whose SQL differs.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The pool, for reads that need no transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins the one transaction of a mutating request (`BEGIN IMMEDIATE` on SQLite).
    ///
    /// The begin runs in a task of its own because sqlx's is not cancel-safe: a call cut by its
    /// deadline between SQLite's acknowledgement of `BEGIN IMMEDIATE` and sqlx's check that
    /// followed it left the connection inside a transaction no `Transaction` owned, holding the
    /// write lock, and the next request to borrow it failed with "begin_with at non-zero
    /// transaction depth" (INTERNAL). Now an abandoned begin completes in its task, and its
    /// [`WriteTx`] is dropped there, which rolls it back in order.
    pub async fn write_tx(&self) -> Result<WriteTx, Error> {
        let store = self.clone();
        tokio::spawn(async move { store.write_tx_begin().await })
            .await
            .map_err(|err| Error::internal(format!("the task beginning a transaction: {err}")))?
    }

    async fn write_tx_begin(&self) -> Result<WriteTx, Error> {
        let (tx, turn) = match self.engine {
            Engine::Sqlite => {
                let turn = self.write_turn.clone().lock_owned().await;
                (self.writer.begin_with("BEGIN IMMEDIATE").await, Some(turn))
            }
            Engine::Postgres => (self.writer.begin().await, None),
        };
        tx.map(|tx| WriteTx { tx: Some(tx), turn })
            .map_err(|err| match err {
                sqlx::Error::Database(db) if is_sqlite_busy(db.code().as_deref()) => {
                    Error::Unavailable {
                        message: "the database is busy; retry with backoff".to_owned(),
                    }
                }
                other => Error::from(other),
            })
    }

    /// On SQLite, copies the WAL into the database file in the background every `every`
    /// (PASSIVE: writers and readers go on meanwhile). No-op on PostgreSQL.
    ///
    /// A PASSIVE checkpoint never resets the WAL itself: the next writer does, and only if the
    /// checkpoint copied every frame and no reader still uses them. Back-to-back writes (a big
    /// import, a queue of deployments) leave every pass behind, and a WAL that grows without
    /// bound slows every read (each page lookup walks the WAL index) — a 100,000-entity import
    /// left a 2 GB WAL, and the engine draining a deep queue a 1.9 GB one. So past
    /// [`WAL_RESET_FRAMES`], a pass that got (nearly) everything is followed by a second one
    /// holding the write turn, which leaves the whole WAL copied for the next writer to restart;
    /// past [`WAL_FORCE_RESET_FRAMES`], [`wal_reset`] restarts it itself.
    pub fn start_checkpointer(&self, every: std::time::Duration) {
        if self.engine != Engine::Sqlite {
            return;
        }
        let pool = self.pool.clone();
        let write_turn = self.write_turn.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if pool.is_closed() {
                    return;
                }
                let progress = match wal_checkpoint(&pool).await {
                    Ok(progress) => progress,
                    Err(_) if pool.is_closed() => return,
                    Err(err) => {
                        tracing::warn!(error = %err, "WAL checkpoint failed; retrying");
                        None
                    }
                };
                let Some((frames, copied)) = progress else {
                    continue;
                };
                let outcome = if frames > WAL_FORCE_RESET_FRAMES {
                    wal_reset(&pool, &write_turn).await.map(|done| {
                        if !done {
                            tracing::debug!(frames, "WAL reset put off: readers");
                        }
                    })
                } else if frames > WAL_RESET_FRAMES && frames - copied <= WAL_RESET_LEFT_FRAMES {
                    wal_catch_up(&pool, &write_turn, copied).await
                } else {
                    Ok(())
                };
                match outcome {
                    Ok(()) => {}
                    Err(_) if pool.is_closed() => return,
                    Err(err) => tracing::warn!(error = %err, "WAL reset failed; retrying"),
                }
            }
        });
    }

    /// Waits for connections in use to be returned, then closes them (used at shutdown).
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Takes or renews the lease of background task `name` for `ttl`; true when this process
    /// holds it now (it ran the task last, or the holder stopped renewing). Replicas call it
    /// before each pass of a task, so the task runs on one of them at a time.
    pub async fn task_lease(&self, name: &str, ttl: Duration) -> Result<bool, Error> {
        let now = now_micros();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO task_leases (name, owner, expires_us) VALUES ($1, '', 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let held = sqlx::query(
            "UPDATE task_leases SET owner = $1, expires_us = $2 WHERE name = $3 AND (owner = $1 OR expires_us < $4)",
        )
        .bind(&*self.instance)
        .bind(now.saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)))
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(held)
    }

    /// The PostgreSQL URL this store connects to (`None` on SQLite).
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres_url.as_deref()
    }

    /// The database for log lines, with any password hidden.
    pub fn describe(&self) -> String {
        let url = self.pool.connect_options().database_url.to_string();
        redact_url(&url)
    }

    /// Reads one value of the server's own metadata.
    #[instrument(skip(self))]
    pub async fn meta_get(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(
            sqlx::query_scalar::<_, String>("SELECT value FROM platform_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Sets `key` to `value` unless it is set already; returns the value now stored.
    #[instrument(skip(self, tx, value))]
    pub async fn meta_put_if_absent(
        &self,
        tx: &mut WriteTx,
        key: &str,
        value: &str,
    ) -> Result<String, Error> {
        sqlx::query(
            "INSERT INTO platform_meta (key, value, update_time_us) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .bind(now_micros())
        .execute(&mut **tx)
        .await?;
        Ok(
            sqlx::query_scalar::<_, String>("SELECT value FROM platform_meta WHERE key = $1")
                .bind(key)
                .fetch_one(&mut **tx)
                .await?,
        )
    }
}

/// SQLite's `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6), with extended codes.
fn is_sqlite_busy(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i64>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Builds the URL of an SQLite file, created if missing, with the path percent-encoded where the
/// URL syntax would misread it.
fn sqlite_url(path: &Path) -> String {
    let mut encoded = String::new();
    for ch in path.to_string_lossy().chars() {
        match ch {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            ' ' => encoded.push_str("%20"),
            other => encoded.push(other),
        }
    }
    format!("sqlite://{encoded}?mode=rwc")
}

/// Takes the lock of `{table}`'s row (`tenant`, `id`) until `tx` ends, with an update that
/// changes nothing, so that a read-modify-write in the transaction cannot interleave with another
/// on PostgreSQL (SQLite's writers are one at a time anyway). Lock first, then read. The table
/// is ours, never caller input.
pub async fn row_lock(
    tx: &mut WriteTx,
    table: &'static str,
    tenant: &str,
    id: &str,
) -> Result<(), Error> {
    sqlx::query(&format!(
        "UPDATE {table} SET etag = etag WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces the mirrored label rows of one resource (`{table}` keyed by tenant, `{owner_column}`,
/// key) with `labels`, so `labels.<key>` filters can run in SQL. Table and column are ours, never
/// caller input.
pub async fn labels_replace(
    tx: &mut WriteTx,
    table: &'static str,
    owner_column: &'static str,
    tenant: &str,
    owner: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), Error> {
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE tenant = $1 AND {owner_column} = $2"
    ))
    .bind(tenant)
    .bind(owner)
    .execute(&mut **tx)
    .await?;
    let insert =
        format!("INSERT INTO {table} (tenant, {owner_column}, key, value) VALUES ($1, $2, $3, $4)");
    for (key, value) in labels {
        sqlx::query(&insert)
            .bind(tenant)
            .bind(owner)
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// One PASSIVE checkpoint: copies what it can of the WAL into the database without waiting for
/// readers or writers; returns (frames in the WAL, frames copied).
async fn wal_checkpoint(pool: &AnyPool) -> Result<Option<(i64, i64)>, sqlx::Error> {
    // Columns: busy (0/1), frames in the WAL, frames checkpointed.
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|r| {
        let frames = sqlx::Row::try_get::<i64, _>(&r, 1).ok()?;
        let copied = sqlx::Row::try_get::<i64, _>(&r, 2).ok()?;
        Some((frames, copied))
    }))
}

/// Leaves the whole WAL copied into the database, for the next writer to restart it from its
/// first frame (if no reader still uses it). `copied`: the frames the last pass copied.
///
/// Passes run without holding writers back while each still finds more than
/// [`WAL_CATCH_UP_FRAMES`] written since the one before (each is shorter than the last, so
/// fewer are written during it); the last holds the write turn and copies that little rest.
async fn wal_catch_up(
    pool: &AnyPool,
    write_turn: &std::sync::Arc<tokio::sync::Mutex<()>>,
    mut copied: i64,
) -> Result<(), sqlx::Error> {
    for _ in 0..4 {
        let Some((frames, now_copied)) = wal_checkpoint(pool).await? else {
            return Ok(());
        };
        let written_since = frames - copied;
        copied = now_copied;
        if written_since <= WAL_CATCH_UP_FRAMES {
            break;
        }
    }
    let _turn = write_turn.clone().lock_owned().await;
    wal_checkpoint(pool).await.map(drop)
}

/// Copies the rest of the WAL into the database and restarts it from its first frame (RESTART
/// checkpoint; SQLite then cuts a longer file back to [`WAL_SIZE_LIMIT`]); false when readers
/// still using the WAL put it off to the next pass. RESTART rather than TRUNCATE: emptying the
/// file made each reset cost tens of milliseconds and every write after it grow the file again.
///
/// It holds this process's write turn, so it waits for no writer, and writers wait for it in the
/// turn's queue, woken the moment it is done, instead of in SQLite's busy handler, whose sleeps
/// of up to 100 ms stretched each reset into a stall of tens of milliseconds for every writer.
/// It waits [`WAL_RESET_READER_WAIT`] at most for readers, so a long read cannot hold writers.
async fn wal_reset(
    pool: &AnyPool,
    write_turn: &std::sync::Arc<tokio::sync::Mutex<()>>,
) -> Result<bool, sqlx::Error> {
    let _turn = write_turn.clone().lock_owned().await;
    let mut conn = pool.acquire().await?;
    let busy_timeout = |wait: Duration| format!("PRAGMA busy_timeout = {}", wait.as_millis());
    conn.execute(busy_timeout(WAL_RESET_READER_WAIT).as_str())
        .await?;
    let outcome = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .fetch_optional(&mut *conn)
        .await;
    if conn
        .execute(busy_timeout(SQLITE_BUSY_TIMEOUT).as_str())
        .await
        .is_err()
    {
        // Never lend out a connection whose writers would give up after milliseconds.
        conn.detach();
    }
    // Columns: busy (0/1), frames in the WAL, frames checkpointed.
    Ok(outcome?
        .is_some_and(|row| sqlx::Row::try_get::<i64, _>(&row, 0).is_ok_and(|busy| busy == 0)))
}

/// Bound parameters one statement may carry on both engines (SQLite allows 32,766 since 3.32,
/// PostgreSQL 65,535); multi-row inserts are split to stay under it.
pub const MAX_BIND_PARAMETERS: usize = 30_000;

/// `$first, $first+1, …` (`count` of them): a list of placeholders, for `IN (…)`.
pub fn placeholder_list(first: usize, count: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(count * 5);
    for n in first..first + count {
        if n > first {
            out.push_str(", ");
        }
        let _ = write!(out, "${n}");
    }
    out
}

/// `($1, …, $columns), ($columns+1, …), …`: the `VALUES` list of a multi-row insert of `rows`
/// rows, in the `$N` placeholders both engines accept.
pub fn values_placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholder_list(row * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Microseconds since the Unix epoch: how every timestamp is stored.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_survive_url_syntax() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b/p?x#1%.db")),
            "sqlite:///tmp/a%20b/p%3Fx%231%25.db?mode=rwc"
        );
    }

    #[test]
    fn busy_codes_include_extended_ones() {
        assert!(is_sqlite_busy(Some("5")));
        assert!(is_sqlite_busy(Some("517"))); // SQLITE_BUSY_SNAPSHOT
        assert!(!is_sqlite_busy(Some("19"))); // constraint
        assert!(!is_sqlite_busy(None));
    }

    #[test]
    fn values_placeholders_number_rows_then_columns() {
        assert_eq!(values_placeholders(1, 2), "($1, $2)");
        assert_eq!(values_placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholder_list(2, 3), "$2, $3, $4");
    }
}
