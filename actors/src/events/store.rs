//! The event path's SQL, for PostgreSQL (production) and SQLite (the embedded default).
//!
//! The hot statement is the group commit of a dedupe shard. On PostgreSQL it is ONE
//! statement (so one round trip and an implicit transaction): the rows travel as one array
//! per column through `UNNEST` (the SQL text never changes with the row count, so it stays
//! prepared), `ON CONFLICT (event_id) DO NOTHING RETURNING event_id` names the accepted ones,
//! and a second CTE writes the batch's `outbox_batches` row when anything was accepted.
//! Rows are sorted by id so that two replicas inserting overlapping sets lock in the same
//! order and cannot deadlock. On SQLite (one writer anyway) it is a short transaction of
//! multi-row `INSERT`s.
//!
//! Every error is a [`StoreError`]; callers bound each call with a timeout.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sea_orm::sqlx::{self, PgPool, Row, SqlitePool};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection};
use uuid::Uuid;

/// One accepted event as stored and published.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event_id: Uuid,
    pub user_id: Arc<str>,
    pub device_id: Option<String>,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub event_hash: String,
    /// The payload object as the client wrote it.
    pub payload: String,
}

/// A committed group: its rows share a batch id and a receive time.
#[derive(Debug, Clone)]
pub struct CommittedBatch {
    pub batch_id: i64,
    pub received_at: DateTime<Utc>,
    pub events: Vec<EventRow>,
}

/// One count to add to `event_counts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CountKey {
    pub user_id: String,
    pub event_type: String,
    pub day: NaiveDate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the durable store failed: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("the durable store did not answer in time")]
    Timeout,
    #[error("the store backend is neither PostgreSQL nor SQLite")]
    Unsupported,
}

/// The event tables behind one connection pool.
#[derive(Clone, Debug)]
pub enum EventStore {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A new batch id: random, positive, 63 bits (collisions are as unlikely as UUID ones).
pub fn new_batch_id() -> i64 {
    let bits = Uuid::new_v4().as_u64_pair().0;
    (bits >> 1) as i64
}

/// Fixed-width UTC text (microseconds): sorts as it compares, for SQLite.
pub fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_sqlite_time(s: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

const PG_INSERT: &str = "WITH ins AS (
    INSERT INTO events (event_id, user_id, device_id, event_type, occurred_at, received_at,
                        event_hash, payload, batch_id)
    SELECT u.event_id, u.user_id, u.device_id, u.event_type, u.occurred_at, $8, u.event_hash,
           u.payload, $9
    FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                $7::text[])
         AS u(event_id, user_id, device_id, event_type, occurred_at, event_hash, payload)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), batch AS (
    INSERT INTO outbox_batches (batch_id, created_at, event_count)
    SELECT $9, $8, count(*) FROM ins HAVING count(*) > 0
)
SELECT event_id FROM ins";

const SELECT_COLUMNS: &str = "event_id, user_id, device_id, event_type, occurred_at, \
     event_hash, payload, batch_id";

impl EventStore {
    pub fn from_connection(db: &DatabaseConnection) -> Result<Self, StoreError> {
        match db.get_database_backend() {
            DatabaseBackend::Postgres => {
                Ok(Self::Postgres(db.get_postgres_connection_pool().clone()))
            }
            DatabaseBackend::Sqlite => Ok(Self::Sqlite(db.get_sqlite_connection_pool().clone())),
            _ => Err(StoreError::Unsupported),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Inserts `rows` (distinct ids) as one batch; returns the ids newly accepted. The batch
    /// row is written in the same transaction when any row is new.
    pub async fn insert_batch(
        &self,
        batch_id: i64,
        received_at: DateTime<Utc>,
        rows: &[&EventRow],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut order: Vec<&EventRow> = rows.to_vec();
        order.sort_unstable_by_key(|r| r.event_id);
        match self {
            Self::Postgres(pool) => {
                let n = order.len();
                let (mut ids, mut users, mut devices, mut types) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                let (mut times, mut hashes, mut payloads) = (
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                    Vec::with_capacity(n),
                );
                for r in order {
                    ids.push(r.event_id);
                    users.push(&*r.user_id);
                    devices.push(r.device_id.as_deref());
                    types.push(r.event_type.as_str());
                    times.push(r.occurred_at);
                    hashes.push(r.event_hash.as_str());
                    payloads.push(r.payload.as_str());
                }
                let accepted = sqlx::query_scalar::<_, Uuid>(PG_INSERT)
                    .bind(ids)
                    .bind(users)
                    .bind(devices)
                    .bind(types)
                    .bind(times)
                    .bind(hashes)
                    .bind(payloads)
                    .bind(received_at)
                    .bind(batch_id)
                    .fetch_all(pool)
                    .await?;
                Ok(accepted)
            }
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let received = sqlite_time(received_at);
                let mut accepted = Vec::new();
                for chunk in order.chunks(500) {
                    let mut sql = String::from(
                        "INSERT INTO events (event_id, user_id, device_id, event_type, \
                         occurred_at, received_at, event_hash, payload, batch_id) VALUES ",
                    );
                    for i in 0..chunk.len() {
                        sql.push_str(if i == 0 { "" } else { "," });
                        sql.push_str("(?,?,?,?,?,?,?,?,?)");
                    }
                    sql.push_str(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
                    let mut query = sqlx::query_scalar::<_, String>(&sql);
                    for r in chunk {
                        query = query
                            .bind(r.event_id.to_string())
                            .bind(&*r.user_id)
                            .bind(r.device_id.as_deref())
                            .bind(&r.event_type)
                            .bind(sqlite_time(r.occurred_at))
                            .bind(&received)
                            .bind(&r.event_hash)
                            .bind(&r.payload)
                            .bind(batch_id);
                    }
                    for id in query.fetch_all(&mut *tx).await? {
                        accepted.push(
                            Uuid::try_parse(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                        );
                    }
                }
                if !accepted.is_empty() {
                    sqlx::query(
                        "INSERT INTO outbox_batches (batch_id, created_at, event_count) \
                         VALUES (?, ?, ?)",
                    )
                    .bind(batch_id)
                    .bind(&received)
                    .bind(accepted.len() as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(accepted)
            }
        }
    }

    /// The stored hash of each of `ids` that is stored.
    pub async fn stored_hashes(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            Self::Postgres(pool) => {
                let rows = sqlx::query(
                    "SELECT event_id, event_hash FROM events WHERE event_id = ANY($1::uuid[])",
                )
                .bind(ids)
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            }
            Self::Sqlite(pool) => {
                let mut out = HashMap::new();
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "SELECT event_id, event_hash FROM events WHERE event_id IN ({})",
                        vec!["?"; chunk.len()].join(",")
                    );
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(id.to_string());
                    }
                    for r in query.fetch_all(pool).await? {
                        let id: String = r.try_get(0)?;
                        let id =
                            Uuid::try_parse(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        out.insert(id, r.try_get(1)?);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Marks batches published (one statement for all of them).
    pub async fn mark_published(&self, batch_ids: &[i64]) -> Result<(), StoreError> {
        if batch_ids.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        match self {
            Self::Postgres(pool) => {
                sqlx::query(
                    "UPDATE outbox_batches SET published_at = $1 \
                     WHERE batch_id = ANY($2::bigint[]) AND published_at IS NULL",
                )
                .bind(now)
                .bind(batch_ids)
                .execute(pool)
                .await?;
            }
            Self::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE outbox_batches SET published_at = ? WHERE published_at IS NULL \
                     AND batch_id IN ({})",
                    vec!["?"; batch_ids.len()].join(",")
                );
                let mut query = sqlx::query(&sql).bind(sqlite_time(now));
                for id in batch_ids {
                    query = query.bind(id);
                }
                query.execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Events of unpublished batches created before `older_than`, at most `limit` batches,
    /// skipping `exclude` (batches this replica is publishing already). On PostgreSQL the
    /// batches stay locked (`FOR UPDATE SKIP LOCKED`) in the returned transaction so that
    /// another replica's sweeper skips them; commit it after marking them published.
    pub async fn unpublished_batches(
        &self,
        older_than: DateTime<Utc>,
        limit: i64,
        exclude: &[i64],
    ) -> Result<
        (
            Option<sqlx::Transaction<'static, sqlx::Postgres>>,
            Vec<CommittedBatch>,
        ),
        StoreError,
    > {
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let rows = sqlx::query(
                    "SELECT batch_id, created_at FROM outbox_batches
                     WHERE published_at IS NULL AND created_at < $1
                       AND NOT (batch_id = ANY($2::bigint[]))
                     ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED",
                )
                .bind(older_than)
                .bind(exclude)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let mut batches = Vec::with_capacity(rows.len());
                let mut ids = Vec::with_capacity(rows.len());
                for r in rows {
                    let batch_id: i64 = r.try_get(0)?;
                    ids.push(batch_id);
                    batches.push(CommittedBatch {
                        batch_id,
                        received_at: r.try_get(1)?,
                        events: Vec::new(),
                    });
                }
                if !ids.is_empty() {
                    let sql = format!(
                        "SELECT {SELECT_COLUMNS} FROM events WHERE batch_id = ANY($1::bigint[])"
                    );
                    let rows = sqlx::query(&sql).bind(&ids).fetch_all(&mut *tx).await?;
                    let mut by_batch: HashMap<i64, Vec<EventRow>> = HashMap::new();
                    for r in rows {
                        let user: String = r.try_get(1)?;
                        by_batch.entry(r.try_get(7)?).or_default().push(EventRow {
                            event_id: r.try_get(0)?,
                            user_id: user.into(),
                            device_id: r.try_get(2)?,
                            event_type: r.try_get(3)?,
                            occurred_at: r.try_get(4)?,
                            event_hash: r.try_get(5)?,
                            payload: r.try_get(6)?,
                        });
                    }
                    for b in &mut batches {
                        b.events = by_batch.remove(&b.batch_id).unwrap_or_default();
                    }
                }
                Ok((Some(tx), batches))
            }
            Self::Sqlite(pool) => {
                let rows = sqlx::query(
                    "SELECT batch_id, created_at FROM outbox_batches
                     WHERE published_at IS NULL AND created_at < ? ORDER BY created_at LIMIT ?",
                )
                .bind(sqlite_time(older_than))
                .bind(limit + exclude.len() as i64)
                .fetch_all(pool)
                .await?;
                let mut batches = Vec::new();
                for r in rows {
                    let batch_id: i64 = r.try_get(0)?;
                    if exclude.contains(&batch_id) || batches.len() as i64 >= limit {
                        continue;
                    }
                    let created: String = r.try_get(1)?;
                    let sql = format!("SELECT {SELECT_COLUMNS} FROM events WHERE batch_id = ?");
                    let mut events = Vec::new();
                    for e in sqlx::query(&sql).bind(batch_id).fetch_all(pool).await? {
                        let id: String = e.try_get(0)?;
                        let user: String = e.try_get(1)?;
                        let occurred: String = e.try_get(4)?;
                        events.push(EventRow {
                            event_id: Uuid::try_parse(&id)
                                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                            user_id: user.into(),
                            device_id: e.try_get(2)?,
                            event_type: e.try_get(3)?,
                            occurred_at: parse_sqlite_time(&occurred)?,
                            event_hash: e.try_get(5)?,
                            payload: e.try_get(6)?,
                        });
                    }
                    batches.push(CommittedBatch {
                        batch_id,
                        received_at: parse_sqlite_time(&created)?,
                        events,
                    });
                }
                Ok((None, batches))
            }
        }
    }

    /// Accepted events not yet published (sum over unpublished batches).
    pub async fn pending_count(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COALESCE(SUM(event_count), 0) FROM outbox_batches \
                   WHERE published_at IS NULL";
        Ok(match self {
            Self::Postgres(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?,
            Self::Sqlite(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?,
        })
    }

    /// Counts each of `events` (id, count key) once, ever: ids already counted are skipped.
    /// One transaction. Returns how many were newly counted.
    pub async fn aggregate(&self, events: &[(Uuid, CountKey)]) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut by_id: HashMap<Uuid, &CountKey> = HashMap::with_capacity(events.len());
        for (id, key) in events {
            by_id.entry(*id).or_insert(key);
        }
        let mut ids: Vec<Uuid> = by_id.keys().copied().collect();
        ids.sort_unstable();
        let fresh: Vec<Uuid> = match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let fresh: Vec<Uuid> = sqlx::query_scalar(
                    "INSERT INTO aggregated_events (event_id)
                     SELECT id FROM UNNEST($1::uuid[]) AS u(id)
                     ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
                let counts = count_keys(&fresh, &by_id);
                if !counts.is_empty() {
                    let (mut users, mut types, mut days, mut ns) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for (k, n) in &counts {
                        users.push(k.user_id.as_str());
                        types.push(k.event_type.as_str());
                        days.push(k.day);
                        ns.push(*n);
                    }
                    sqlx::query(
                        "INSERT INTO event_counts (user_id, event_type, day, count)
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::bigint[])
                         ON CONFLICT (user_id, event_type, day)
                         DO UPDATE SET count = event_counts.count + EXCLUDED.count",
                    )
                    .bind(users)
                    .bind(types)
                    .bind(days)
                    .bind(ns)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                fresh
            }
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut fresh = Vec::new();
                for id in &ids {
                    let done = sqlx::query(
                        "INSERT INTO aggregated_events (event_id) VALUES (?)
                         ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        fresh.push(*id);
                    }
                }
                for (k, n) in count_keys(&fresh, &by_id) {
                    sqlx::query(
                        "INSERT INTO event_counts (user_id, event_type, day, count)
                         VALUES (?, ?, ?, ?) ON CONFLICT (user_id, event_type, day)
                         DO UPDATE SET count = count + excluded.count",
                    )
                    .bind(k.user_id)
                    .bind(k.event_type)
                    .bind(k.day.to_string())
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                fresh
            }
        };
        Ok(fresh.len())
    }

    /// Deletes up to `limit` events of published batches created before `cutoff` (with
    /// their ids in `aggregated_events`), then the batch rows left empty. Never touches an
    /// unpublished batch. Returns the events and batch rows deleted.
    pub async fn delete_expired(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError> {
        match self {
            Self::Postgres(pool) => {
                let events = sqlx::query_scalar::<_, i64>(
                    "WITH gone AS (
                        DELETE FROM events WHERE event_id IN (
                            SELECT e.event_id FROM events e
                            WHERE e.batch_id IN (
                                SELECT batch_id FROM outbox_batches
                                WHERE created_at < $1 AND published_at IS NOT NULL
                                ORDER BY created_at LIMIT 100)
                            LIMIT $2)
                        RETURNING event_id),
                     counted AS (
                        DELETE FROM aggregated_events
                        WHERE event_id IN (SELECT event_id FROM gone))
                     SELECT count(*) FROM gone",
                )
                .bind(cutoff)
                .bind(limit)
                .fetch_one(pool)
                .await? as u64;
                let batches = sqlx::query(
                    "DELETE FROM outbox_batches b WHERE b.batch_id IN (
                        SELECT batch_id FROM outbox_batches
                        WHERE created_at < $1 AND published_at IS NOT NULL
                        ORDER BY created_at LIMIT 100)
                     AND NOT EXISTS (SELECT 1 FROM events e WHERE e.batch_id = b.batch_id)",
                )
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(events + batches)
            }
            Self::Sqlite(pool) => {
                let cutoff = sqlite_time(cutoff);
                let mut tx = pool.begin().await?;
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT e.event_id FROM events e
                     WHERE e.batch_id IN (
                        SELECT batch_id FROM outbox_batches
                        WHERE created_at < ? AND published_at IS NOT NULL
                        ORDER BY created_at LIMIT 100)
                     LIMIT ?",
                )
                .bind(&cutoff)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let mut deleted = 0;
                for id in &ids {
                    sqlx::query("DELETE FROM aggregated_events WHERE event_id = ?")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    deleted += sqlx::query("DELETE FROM events WHERE event_id = ?")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                deleted += sqlx::query(
                    "DELETE FROM outbox_batches WHERE batch_id IN (
                        SELECT batch_id FROM outbox_batches
                        WHERE created_at < ? AND published_at IS NOT NULL
                        ORDER BY created_at LIMIT 100)
                     AND NOT EXISTS (SELECT 1 FROM events e
                                     WHERE e.batch_id = outbox_batches.batch_id)",
                )
                .bind(&cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(deleted)
            }
        }
    }
}

fn count_keys(fresh: &[Uuid], by_id: &HashMap<Uuid, &CountKey>) -> HashMap<CountKey, i64> {
    let mut counts: HashMap<CountKey, i64> = HashMap::new();
    for id in fresh {
        if let Some(key) = by_id.get(id) {
            *counts.entry((*key).clone()).or_default() += 1;
        }
    }
    counts
}
