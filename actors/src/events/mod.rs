//! The event path (contract section 5; DESIGN.md "The event path").
//!
//! ```text
//! POST /events ──> EventIngest ──(slice per shard)──> DedupeShard x N ──> events + outbox_batches
//!   (judge: validate + hash)        group commit: Redis ids? → one INSERT .. ON CONFLICT
//!                                                     │ committed batch (in memory)
//!                                                     v
//!                                   OutboxRelay ──> JetStream (Nats-Msg-Id = eventId)
//!                                     │ one UPDATE per batch; sweeper for leftovers
//!                                   Aggregator <── durable consumer ──> event_counts
//!                                   Janitor: retention, in small batches
//! ```
//!
//! - [`validate`]: the pure judgement of a body (5.1, 12).
//! - [`ingest`]: [`ingest::EventIngest`], the handle the HTTP layer calls.
//! - [`shard`]: `DedupeShard`, group commit per slice of ids.
//! - [`relay`]: `OutboxRelay`, publishing and the sweeper; [`publish`]: one round of
//!   JetStream publishes and their acks.
//! - [`aggregator`], [`janitor`]: the other actors of the path.
//! - [`store`]: the SQL (PostgreSQL and SQLite); [`stream`]: the JetStream shapes;
//!   [`id_cache`]: Redis; [`hash_window`]: the in-memory `eventIdAndHash` window.
//!
//! # Why this outbox shape
//!
//! A per-event `published_at` would double the database's writes on the hot path (an
//! `UPDATE` per event after its `INSERT`). Here each group commit writes its events plus
//! ONE `outbox_batches` row in the same statement, and publication is recorded with ONE
//! `UPDATE` per batch (a few hundred events), so the extra work is per batch, not per
//! event. The safety is that of a per-row flag: a batch row without `published_at` means
//! "maybe not published", and anything so marked is (re)published, by the relay right
//! after the commit or by its sweeper after a crash. Replays are absorbed by JetStream's
//! duplicate window (`Nats-Msg-Id`) and by the aggregator's per-id bookkeeping. Because
//! batches are found by their own flag rather than by a watermark, rows that commit out of
//! order and several replicas need no coordination: each replica's relay publishes its own
//! batches, and sweepers lock (`FOR UPDATE SKIP LOCKED`) what they take.

pub mod aggregator;
pub mod hash_window;
pub mod id_cache;
pub mod ingest;
pub mod janitor;
pub mod publish;
pub mod relay;
pub mod shard;
pub mod store;
pub mod stream;
pub mod validate;
