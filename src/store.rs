//! The durable store: a sea-orm connection to PostgreSQL (production) or SQLite (the
//! embedded default), migrated at start-up unless told not to.

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::settings::Settings;

/// Connects and, when `RUN_MIGRATIONS` is on (the default), brings the schema up to date.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbErr> {
    let url = settings.database_url.expose();
    let sqlite = url.starts_with("sqlite:");
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // SQLite serialises writers anyway; a few connections serve readers.
        .max_connections(if sqlite { 4 } else { 32 })
        .min_connections(1)
        // WAL lets readers run beside the single writer; busy_timeout (set on every pooled
        // connection) waits instead of failing when two writers meet.
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
        });
    let db = Database::connect(options).await?;
    if settings.run_migrations {
        Migrator::up(&db, None).await?;
    }
    Ok(db)
}

/// Whether the store answers a trivial query within a short bound (readiness).
pub async fn ping(db: &DatabaseConnection) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), db.ping()).await,
        Ok(Ok(()))
    )
}
