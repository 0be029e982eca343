//! Wiring of the event path (see `actors::events`): from the settings, the supervised
//! children (`outbox_relay`, `aggregator`, `janitor`, `dedupe_shard_{i}`), the
//! [`EventIngest`] handle `POST /events` calls, and the readiness probe of publishing.

use std::sync::Arc;
use std::time::Duration;

use actors::events::aggregator::{Aggregator, AggregatorArgs};
use actors::events::id_cache::IdCache;
use actors::events::ingest::EventIngest;
use actors::events::janitor::{Janitor, JanitorArgs};
use actors::events::publish::JetStreamLink;
use actors::events::relay::{OutboxBacklog, OutboxRelay, RelayArgs};
use actors::events::shard::{DedupeShard, ShardArgs};
use actors::events::store::EventStore;
use actors::events::stream::ensure_stream;
use actors::events::validate::Rules;
use actors::supervisor::{ChildSpec, Slot};
use anyhow::Context;
use async_nats::jetstream;
use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;

use crate::background::Background;
use crate::readiness::{ProbeReport, ReadinessProbe};
use crate::settings::{DedupeMode, Failpoint, Settings};

/// Bound of one group commit's database work, and of a request's wait for its shards.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Most rows per group commit.
const MAX_GROUP_ROWS: usize = 4_000;
/// Redis calls on the hot path wait at most this long.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// How long start-up waits for JetStream to describe the stream before going on without.
const STREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EventPath {
    pub ingest: EventIngest,
    /// In start order: the relay first, so that it stops last and flushes what the shards
    /// handed it.
    pub children: Vec<ChildSpec>,
    pub probe: Arc<dyn ReadinessProbe>,
    pub backlog: OutboxBacklog,
    /// The event path's JetStream (`None` when `NATS_URL` is unset), which the backpressure
    /// controller asks for consumer lag.
    pub jetstream: Option<jetstream::Context>,
}

/// The event path's actors and handles; the relay, the aggregator and the janitor run on
/// `background`, with connections opened there.
pub async fn build(
    settings: &Settings,
    db: &DatabaseConnection,
    background: &Background,
) -> anyhow::Result<EventPath> {
    let ev = &settings.events;
    let store = EventStore::from_connection(db).context("the events store")?;
    let background_store = {
        let settings = settings.clone();
        match background
            .run(async move { crate::store::connect_background(&settings).await })
            .await?
            .context("the durable store (DATABASE_URL) is unreachable")?
        {
            Some(db) => EventStore::from_connection(&db).context("the events store")?,
            None => store.clone(),
        }
    };
    let bg = background.handle();
    let retention = Duration::from_secs(u64::from(ev.max_age_days) * 86_400);

    let nats = match &settings.nats_url {
        None => None,
        Some(url) => {
            let client = connect_nats(background, url.expose()).await?;
            let mut js = jetstream::new(client.clone());
            js.set_timeout(Duration::from_secs(3));
            match tokio::time::timeout(
                STREAM_CHECK_TIMEOUT,
                ensure_stream(&js, &ev.stream, ev.max_age_days),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) if err.is_fatal() => return Err(err.into()),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "JetStream is not answering yet; the relay will retry")
                }
                Err(_) => tracing::warn!("JetStream is not answering yet; the relay will retry"),
            }
            Some((client, js))
        }
    };
    let cache = match &settings.redis_url {
        None => None,
        Some(url) => Some(
            IdCache::connect(
                url.expose(),
                &settings.redis_key_prefix,
                retention,
                REDIS_TIMEOUT,
            )
            .context("REDIS_URL")?,
        ),
    };

    let backlog = OutboxBacklog::default();
    let relay = Slot::new();
    let mut children = vec![ChildSpec::actor(
        "outbox_relay",
        OutboxRelay,
        RelayArgs {
            store: background_store.clone(),
            jetstream: nats
                .as_ref()
                .map(|(client, js)| JetStreamLink::new(client.clone(), js.clone())),
            stream: ev.stream.clone(),
            max_age_days: ev.max_age_days,
            backlog: backlog.clone(),
            sweep_interval: Duration::from_secs(1),
            sweep_grace: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(3),
            max_held_events: 50_000,
        },
        relay.clone(),
    )
    .on_runtime(bg.clone())];
    if let (Some(url), Some(_)) = (&settings.nats_url, &nats) {
        // A connection of its own: behind the relay's publishes on a shared one, the
        // aggregator's fetches and acks waited in the same queue.
        let mut js = jetstream::new(connect_nats(background, url.expose()).await?);
        js.set_timeout(Duration::from_secs(3));
        children.push(
            ChildSpec::actor(
                "aggregator",
                Aggregator,
                AggregatorArgs {
                    store: background_store.clone(),
                    jetstream: js,
                    stream: ev.stream.clone(),
                    consumer: ev.aggregator_consumer.clone(),
                    max_age_days: ev.max_age_days,
                    batch: 1_000,
                    fetch_wait: Duration::from_millis(500),
                    timeout: Duration::from_secs(5),
                },
                Slot::new(),
            )
            .on_runtime(bg.clone()),
        );
    }
    children.push(
        ChildSpec::actor(
            "janitor",
            Janitor,
            JanitorArgs {
                store: background_store,
                retention,
                interval: Duration::from_secs(60),
                chunk: 1_000,
                pause: Duration::from_millis(50),
                timeout: Duration::from_secs(10),
            },
            Slot::new(),
        )
        .on_runtime(bg),
    );
    let by_hash = ev.dedupe_mode == DedupeMode::EventIdAndHash;
    let mut shards = Vec::with_capacity(ev.shards);
    for i in 0..ev.shards {
        let slot = Slot::new();
        children.push(ChildSpec::actor(
            format!("dedupe_shard_{i}"),
            DedupeShard,
            ShardArgs {
                store: store.clone(),
                relay: relay.clone(),
                cache: cache.clone(),
                hash_window: by_hash.then_some(ev.hash_window),
                max_group_rows: MAX_GROUP_ROWS,
                max_in_flight: ev.shard_flushes,
                statement_timeout: STATEMENT_TIMEOUT,
                crash_after_commit: settings.failpoint == Some(Failpoint::CrashAfterCommit),
            },
            slot.clone(),
        ));
        shards.push(slot);
    }
    let ingest = EventIngest::new(
        shards,
        Rules {
            max_batch: ev.max_batch,
            max_payload_bytes: ev.max_payload_bytes,
            max_age_days: ev.max_age_days,
            hash_bucket_seconds: ev.hash_bucket_seconds,
        },
        by_hash,
        REQUEST_TIMEOUT,
    );
    let jetstream = nats.as_ref().map(|(_, js)| js.clone());
    let probe = Arc::new(PublishingProbe {
        nats: nats.map(|(client, _)| client),
        backlog: backlog.clone(),
    });
    Ok(EventPath {
        ingest,
        children,
        probe,
        backlog,
        jetstream,
    })
}

/// A NATS connection that keeps trying (at start-up too) and queues up to 16k messages,
/// opened on the background runtime (its connection task runs there).
async fn connect_nats(background: &Background, url: &str) -> anyhow::Result<async_nats::Client> {
    background.run(open_nats_connection(url.to_owned())).await?
}

async fn open_nats_connection(url: String) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .client_capacity(16_384)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((50u64 << attempt.min(5)).min(1_000))
        })
        .connect(url)
        .await
        .context("NATS_URL")
}

/// Publishing never makes the service unready (accepted events wait in the outbox, and
/// backpressure watches the backlog), but the report says how it goes.
struct PublishingProbe {
    nats: Option<async_nats::Client>,
    backlog: OutboxBacklog,
}

impl ReadinessProbe for PublishingProbe {
    fn check(&self) -> BoxFuture<'_, Vec<ProbeReport>> {
        let detail = match &self.nats {
            None => Some("publishing is off: NATS_URL is unset".to_owned()),
            Some(client) => match client.connection_state() {
                async_nats::connection::State::Connected => None,
                _ => Some(format!(
                    "NATS is unreachable; {} accepted events wait in the outbox",
                    self.backlog.get()
                )),
            },
        };
        Box::pin(async move {
            vec![ProbeReport {
                name: "publishing".into(),
                ready: true,
                detail,
            }]
        })
    }
}
