//! The durable store: a sea-orm connection to PostgreSQL (production) or SQLite (the
//! embedded default), migrated at start-up unless told not to.

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};

use crate::settings::Settings;

/// Connects and, when `RUN_MIGRATIONS` is on (the default), brings the schema up to date.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbErr> {
    let url = settings.database_url.expose();
    let sqlite = url.starts_with("sqlite:");
    // SQLite serialises writers anyway; a few connections serve readers.
    let db = Database::connect(options(url, if sqlite { (4, 1) } else { (32, 4) })).await?;
    if settings.run_migrations {
        migrate(&db, url, sqlite).await?;
    }
    Ok(db)
}

/// A small second pool for the background runtime (see [`crate::background`]), opened
/// from it; `None` on SQLite, whose connections are driven by threads of their own rather
/// than by a runtime, so the one pool serves both.
pub async fn connect_background(settings: &Settings) -> Result<Option<DatabaseConnection>, DbErr> {
    let url = settings.database_url.expose();
    if url.starts_with("sqlite:") {
        return Ok(None);
    }
    Ok(Some(Database::connect(options(url, (8, 2))).await?))
}

fn options(url: &str, (max, min): (u32, u32)) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .max_connections(max)
        .min_connections(min)
        // A ping before every statement is a round trip on the hot path (it showed in the
        // ingest profile); a broken connection fails its statement and is discarded.
        .test_before_acquire(false)
        // WAL lets readers run beside the single writer; busy_timeout (set on every pooled
        // connection) waits instead of failing when two writers meet.
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
        });
    options
}

/// An arbitrary, fixed key for the advisory lock that serialises migrations.
const MIGRATION_LOCK_KEY: i64 = 0x051D_ECA7;

/// Runs the migrations. On PostgreSQL, replicas starting together take turns under a
/// session advisory lock held on a connection of its own (the pool's connections come and
/// go, and a session lock belongs to one connection); the later ones then find nothing to
/// do. SQLite has one process by construction.
async fn migrate(db: &DatabaseConnection, url: &str, sqlite: bool) -> Result<(), DbErr> {
    if sqlite {
        return Migrator::up(db, None).await;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .min_connections(1);
    let lock = Database::connect(options).await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .await?;
    let result = Migrator::up(db, None).await;
    let _ = lock
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
        .await;
    let _ = lock.close().await;
    result
}

/// Whether the store answers a trivial query within a short bound (readiness).
pub async fn ping(db: &DatabaseConnection) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), db.ping()).await,
        Ok(Ok(()))
    )
}
