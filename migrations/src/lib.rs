//! Migrations of the sidecar's durable store. Every migration runs on PostgreSQL (production)
//! and SQLite (the embedded default), so only portable schema statements are used; where an
//! engine-specific feature matters (a partial index on PostgreSQL), the migration asks the
//! backend and says why.
//!
//! Map:
//! - [`m20261204_000001_config_snapshot`]: the last good `/config` from .NET, so a replica
//!   restarted during a .NET outage still serves it.
//! - [`m20261205_000001_events`]: the events table (also the outbox), outbox batches,
//!   and the aggregator's tables.

pub use sea_orm_migration::prelude::*;

mod m20261204_000001_config_snapshot;
mod m20261205_000001_events;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261204_000001_config_snapshot::Migration),
            Box::new(m20261205_000001_events::Migration),
        ]
    }
}
