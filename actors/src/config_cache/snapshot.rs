//! The last good config kept in the durable store (table `config_snapshot`, created by the
//! first migration), so that a replica restarted during a .NET outage still has a copy.
//!
//! One row per document name (`config`). Every replica writes each copy it fetches, and a
//! write only replaces a row fetched earlier, so the row holds the newest copy any replica
//! has fetched, whatever the order in which the writes arrive.

use sea_orm::sea_query::{Alias, Expr, OnConflict};
use sea_orm::{DatabaseConnection, EntityTrait, Set};

/// The row's name for the `/config` document.
pub const CONFIG_SNAPSHOT_NAME: &str = "config";

/// A stored copy: the config's JSON text and when it was fetched from .NET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub body: String,
    /// Unix milliseconds (wall clock of the replica that fetched it).
    pub fetched_at_ms: i64,
}

/// The store failed; the cache logs it and carries on from memory.
#[derive(Debug, Clone, thiserror::Error)]
#[error("config snapshot store: {0}")]
pub struct SnapshotError(pub String);

/// Where the cache keeps its last good copy.
#[async_trait::async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The stored copy, if any.
    async fn load(&self) -> Result<Option<Snapshot>, SnapshotError>;
    /// Keeps `snapshot` unless the stored copy was fetched later.
    async fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotError>;
}

/// The sea-orm entity of `config_snapshot`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "config_snapshot")]
    pub struct Model {
        /// Which document (`config`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The JSON text as fetched.
        #[sea_orm(column_type = "Text")]
        pub body: String,
        /// Unix milliseconds of the fetch.
        pub fetched_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// [`SnapshotStore`] over the sea-orm connection (PostgreSQL or SQLite).
#[derive(Clone)]
pub struct DbSnapshotStore {
    db: DatabaseConnection,
    name: String,
}

impl DbSnapshotStore {
    pub fn new(db: DatabaseConnection, name: impl Into<String>) -> Self {
        DbSnapshotStore {
            db,
            name: name.into(),
        }
    }
}

#[async_trait::async_trait]
impl SnapshotStore for DbSnapshotStore {
    async fn load(&self) -> Result<Option<Snapshot>, SnapshotError> {
        let row = entity::Entity::find_by_id(self.name.clone())
            .one(&self.db)
            .await
            .map_err(|e| SnapshotError(e.to_string()))?;
        Ok(row.map(|row| Snapshot {
            body: row.body,
            fetched_at_ms: row.fetched_at,
        }))
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        use entity::Column;
        let row = entity::ActiveModel {
            name: Set(self.name.clone()),
            body: Set(snapshot.body.clone()),
            fetched_at: Set(snapshot.fetched_at_ms),
        };
        // Replace only an older copy: `... DO UPDATE ... WHERE stored < excluded`, which
        // PostgreSQL and SQLite (3.24+) both understand.
        let newer = Expr::col((entity::Entity, Column::FetchedAt))
            .lt(Expr::col((Alias::new("excluded"), Column::FetchedAt)));
        let upsert = OnConflict::column(Column::Name)
            .update_columns([Column::Body, Column::FetchedAt])
            .action_and_where(newer)
            .to_owned();
        entity::Entity::insert(row)
            .on_conflict(upsert)
            .exec_without_returning(&self.db)
            .await
            .map_err(|e| SnapshotError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use migrations::{Migrator, MigratorTrait};
    use sea_orm::Database;

    use super::*;

    async fn store() -> DbSnapshotStore {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        DbSnapshotStore::new(db, CONFIG_SNAPSHOT_NAME)
    }

    fn snapshot(body: &str, at: i64) -> Snapshot {
        Snapshot {
            body: body.into(),
            fetched_at_ms: at,
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_copy_whatever_the_order_of_writes() {
        let store = store().await;
        assert_eq!(store.load().await.unwrap(), None);
        store.save(&snapshot("{\"v\":1}", 100)).await.unwrap();
        assert_eq!(
            store.load().await.unwrap(),
            Some(snapshot("{\"v\":1}", 100))
        );
        store.save(&snapshot("{\"v\":3}", 300)).await.unwrap();
        store.save(&snapshot("{\"v\":2}", 200)).await.unwrap();
        assert_eq!(
            store.load().await.unwrap(),
            Some(snapshot("{\"v\":3}", 300))
        );
        store.save(&snapshot("{\"v\":4}", 400)).await.unwrap();
        assert_eq!(
            store.load().await.unwrap(),
            Some(snapshot("{\"v\":4}", 400))
        );
    }

    #[tokio::test]
    async fn names_are_separate_rows() {
        let store = store().await;
        let other = DbSnapshotStore::new(store.db.clone(), "other");
        store.save(&snapshot("{}", 1)).await.unwrap();
        assert_eq!(other.load().await.unwrap(), None);
    }
}
