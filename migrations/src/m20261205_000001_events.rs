//! The event path's tables (contract section 5, DESIGN.md "The event path"):
//!
//! - `events`: one row per accepted event, keyed by `event_id` (the unique index that makes
//!   `accepted` happen at most once, across replicas). It is also the outbox: each row
//!   carries the `batch_id` of the group commit that wrote it.
//! - `outbox_batches`: one row per group commit, written in the same transaction as its
//!   events; `published_at` is set (one `UPDATE` per batch, not per event) once every event
//!   of the batch is acknowledged by JetStream. A partial index on the unpublished rows lets
//!   the relay's sweeper find them without scanning the published ones.
//! - `aggregated_events`: ids the aggregator has counted (its exactly-once effect under
//!   redelivery; the janitor removes an id with its event, so it needs no time column or
//!   index of its own), and `event_counts`: counts per (user, event type, UTC day).
//!
//! PostgreSQL gets native types (`uuid`, `timestamptz`); SQLite gets text (RFC 3339 UTC
//! timestamps with a fixed width sort as they compare), so the statements are per backend.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS outbox_batches (
        batch_id BIGINT PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL,
        event_count INTEGER NOT NULL,
        published_at TIMESTAMPTZ NULL
    )",
    "CREATE INDEX IF NOT EXISTS outbox_batches_unpublished
        ON outbox_batches (created_at) WHERE published_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_batches_created_at ON outbox_batches (created_at)",
    "CREATE TABLE IF NOT EXISTS events (
        event_id UUID PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NULL,
        event_type TEXT NOT NULL,
        occurred_at TIMESTAMPTZ NOT NULL,
        received_at TIMESTAMPTZ NOT NULL,
        event_hash TEXT NOT NULL,
        payload TEXT NOT NULL,
        batch_id BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS events_batch_id ON events (batch_id)",
    "CREATE TABLE IF NOT EXISTS aggregated_events (event_id UUID PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS event_counts (
        user_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        day DATE NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (user_id, event_type, day)
    )",
];

const SQLITE_UP: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS outbox_batches (
        batch_id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        event_count INTEGER NOT NULL,
        published_at TEXT NULL
    )",
    "CREATE INDEX IF NOT EXISTS outbox_batches_unpublished
        ON outbox_batches (created_at) WHERE published_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_batches_created_at ON outbox_batches (created_at)",
    "CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NULL,
        event_type TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        event_hash TEXT NOT NULL,
        payload TEXT NOT NULL,
        batch_id INTEGER NOT NULL
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS events_batch_id ON events (batch_id)",
    "CREATE TABLE IF NOT EXISTS aggregated_events (event_id TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS event_counts (
        user_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        day TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (user_id, event_type, day)
    ) WITHOUT ROWID",
];

const DOWN: &[&str] = &[
    "DROP TABLE IF EXISTS event_counts",
    "DROP TABLE IF EXISTS aggregated_events",
    "DROP TABLE IF EXISTS events",
    "DROP TABLE IF EXISTS outbox_batches",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES_UP,
            DatabaseBackend::Sqlite => SQLITE_UP,
            other => {
                return Err(DbErr::Migration(format!(
                    "the events schema supports PostgreSQL and SQLite, not {other:?}"
                )))
            }
        };
        let db = manager.get_connection();
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in DOWN {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
