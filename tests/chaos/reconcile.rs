//! After the storm: what the clients were told against what the database, the stream and
//! the aggregates hold.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::cluster::Cluster;
use crate::load::Report;

pub struct Outcome {
    pub in_db: usize,
    pub in_stream: usize,
    /// Ids answered `accepted` that are not in the database.
    pub lost: Vec<String>,
    /// Ids answered `accepted` more than once.
    pub doubled_acceptances: Vec<String>,
    /// Ids in the stream more than once.
    pub doubled_in_stream: Vec<String>,
    /// Ids in the database that never reached the stream.
    pub unpublished: Vec<String>,
    /// Ids in the stream that are not in the database (never accepted).
    pub phantoms: Vec<String>,
    /// Ids in the database that no client sent.
    pub unsent: Vec<String>,
    pub aggregate_total: i64,
    pub aggregate_mismatches: Vec<String>,
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

async fn wait_until(
    db: &DatabaseConnection,
    sql: &str,
    target: impl Fn(i64) -> bool,
    within: Duration,
) -> i64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let value = scalar(db, sql).await;
        if target(value) || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn reconcile(cluster: &Cluster, report: &Report) -> Outcome {
    let db = Database::connect(cluster.postgres.url(&cluster.database))
        .await
        .expect("private PostgreSQL");
    // The relays drain the outbox and the aggregator catches up, by themselves.
    let pending = wait_until(
        &db,
        "SELECT count(*)::bigint FROM outbox_batches WHERE published_at IS NULL",
        |n| n == 0,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(pending, 0, "the outbox drained after the faults stopped");
    let events = scalar(&db, "SELECT count(*)::bigint FROM events").await;
    wait_until(
        &db,
        "SELECT count(*)::bigint FROM aggregated_events",
        |n| n >= events,
        Duration::from_secs(90),
    )
    .await;

    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT event_id::text AS id FROM events".to_owned(),
        ))
        .await
        .unwrap();
    let db_ids: HashSet<String> = rows
        .iter()
        .map(|r| r.try_get::<String>("", "id").unwrap())
        .collect();

    let stream_ids = read_stream(cluster).await;
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for id in &stream_ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }

    let aggregate_total = scalar(
        &db,
        "SELECT coalesce(sum(count), 0)::bigint FROM event_counts",
    )
    .await;
    let mismatch_rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT e.user_id || '/' || e.event_type || '/' || e.day::text || ': events ' || e.n || ', counted ' || coalesce(c.count, 0) AS m
             FROM (SELECT user_id, event_type, (occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM events GROUP BY 1, 2, 3) e
             LEFT JOIN event_counts c ON c.user_id = e.user_id AND c.event_type = e.event_type AND c.day = e.day
             WHERE coalesce(c.count, 0) <> e.n"
                .to_owned(),
        ))
        .await
        .unwrap_or_default();

    Outcome {
        in_db: db_ids.len(),
        in_stream: stream_ids.len(),
        lost: report
            .accepted
            .keys()
            .filter(|id| !db_ids.contains(*id))
            .cloned()
            .collect(),
        doubled_acceptances: report
            .accepted
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.clone())
            .collect(),
        doubled_in_stream: counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.to_string())
            .collect(),
        unpublished: db_ids
            .iter()
            .filter(|id| !counts.contains_key(id.as_str()))
            .cloned()
            .collect(),
        phantoms: counts
            .keys()
            .filter(|id| !db_ids.contains(**id))
            .map(|id| id.to_string())
            .collect(),
        unsent: db_ids
            .iter()
            .filter(|id| !report.sent.contains_key(*id))
            .cloned()
            .collect(),
        aggregate_total,
        aggregate_mismatches: mismatch_rows
            .iter()
            .filter_map(|r| r.try_get::<String>("", "m").ok())
            .collect(),
    }
}

/// Every `Nats-Msg-Id` in the stream, read with an ephemeral consumer from the start.
async fn read_stream(cluster: &Cluster) -> Vec<String> {
    let client = async_nats::connect(cluster.nats.url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(&cluster.stream)
        .await
        .expect("the stream exists");
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::with_capacity(total);
    while ids.len() < total {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => {
                // The body names the event (contract 5.4); the Msg-Id header must agree.
                let body: serde_json::Value =
                    serde_json::from_slice(&m.payload).unwrap_or_default();
                let id = body["eventId"].as_str().unwrap_or_default().to_owned();
                let header = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string());
                if header.as_deref().is_some_and(|h| h != id) {
                    panic!("Nats-Msg-Id {header:?} differs from the body's eventId {id}");
                }
                ids.push(id);
            }
            _ => break,
        }
    }
    ids
}

impl Outcome {
    pub fn summary(&self, report: &Report, faults: usize) -> String {
        let accepted = report.accepted.len();
        let mut statuses: Vec<_> = report.statuses.iter().collect();
        statuses.sort();
        format!(
            "chaos figures\n  requests {}  events sent {}  accepted {}  duplicates {}  faults injected {}\n  \
             in database {}  in stream {}  aggregated {}\n  lost {}  doubled {}  doubled in stream {}  \
             unpublished {}  phantoms {}  forbidden answers {}\n  answers by status (0 = no answer): {:?}",
            report.requests,
            report.events_sent,
            accepted,
            report.duplicates,
            faults,
            self.in_db,
            self.in_stream,
            self.aggregate_total,
            self.lost.len(),
            self.doubled_acceptances.len(),
            self.doubled_in_stream.len(),
            self.unpublished.len(),
            self.phantoms.len(),
            report.forbidden_answers.len(),
            statuses,
        )
    }

    pub fn assert_clean(&self) {
        assert!(
            self.lost.is_empty(),
            "accepted ids missing from the database: {:?}",
            &self.lost[..self.lost.len().min(5)]
        );
        assert!(
            self.doubled_acceptances.is_empty(),
            "ids accepted twice: {:?}",
            &self.doubled_acceptances[..self.doubled_acceptances.len().min(5)]
        );
        assert!(
            self.doubled_in_stream.is_empty(),
            "ids in the stream twice: {:?}",
            &self.doubled_in_stream[..self.doubled_in_stream.len().min(5)]
        );
        assert!(
            self.unpublished.is_empty(),
            "stored ids never published: {:?}",
            &self.unpublished[..self.unpublished.len().min(5)]
        );
        assert!(
            self.phantoms.is_empty(),
            "stream ids never stored: {:?}",
            &self.phantoms[..self.phantoms.len().min(5)]
        );
        assert!(
            self.unsent.is_empty(),
            "stored ids no client sent: {:?}",
            &self.unsent[..self.unsent.len().min(5)]
        );
        assert_eq!(
            self.aggregate_total as usize, self.in_db,
            "aggregates count each event once"
        );
        assert!(
            self.aggregate_mismatches.is_empty(),
            "aggregate mismatches: {:?}",
            self.aggregate_mismatches
        );
    }
}
