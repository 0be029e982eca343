//! `DedupeShard`: owns a slice of the event-id space (or, in `eventIdAndHash` mode, of the
//! hash space) and turns concurrent requests into group commits.
//!
//! Each request's slice arrives as [`ShardMsg::Submit`] and is queued; the first one also
//! schedules a [`ShardMsg::Flush`] to the shard itself. Because the mailbox is FIFO, that
//! flush runs after every submit that was already waiting, so one flush takes them all
//! (up to `max_group_rows`) and runs them as one group commit in a task of its own, whose
//! end comes back as [`ShardMsg::FlushDone`]. At most `max_in_flight` group commits run at
//! once; while they do, the next group fills up. The window is therefore the time until a
//! commit slot frees; nothing waits on a timer, and a lone request is flushed at once.
//!
//! Two group commits of one shard (or of two replicas) may hold the same id: the unique
//! index decides (one `INSERT` waits for the other's commit and sees a conflict), and rows
//! are inserted in id order so such waits cannot deadlock.
//!
//! A flush: Redis (when configured) answers the ids it knows are committed; the
//! `eventIdAndHash` window is claimed; the rest goes to the database in ONE statement
//! (`INSERT .. ON CONFLICT DO NOTHING RETURNING`, plus the outbox batch row, atomically),
//! and one `SELECT` fetches the stored hashes of the conflicts (for `hashMismatch`). Only
//! then does every request of the group get its answer. The accepted rows go, in memory,
//! to the [`OutboxRelay`](super::relay); Redis learns the committed ids afterwards.
//!
//! The database work is bounded by a timeout; a failure answers every request of the group
//! with [`ShardError::StoreUnavailable`] (nothing is claimed accepted; a commit that
//! happened anyway is published by the relay's sweeper and answered `duplicate` on retry).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

use super::hash_window::HashWindow;
use super::id_cache::{Claim, IdCache};
use super::relay::RelayMsg;
use super::store::{new_batch_id, CommittedBatch, EventRow, EventStore};
use crate::supervisor::Slot;

/// What became of one submitted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Newly committed by this request.
    Accepted,
    /// Already stored; `stored_hash` is the hash stored with the first acceptance, when
    /// known.
    Duplicate { stored_hash: Option<String> },
    /// `eventIdAndHash`: a new id whose hash another id got accepted within the window;
    /// not stored.
    HashDuplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("the durable store is unavailable")]
    StoreUnavailable,
}

pub type ShardReply = RpcReplyPort<Result<Vec<Decision>, ShardError>>;

pub enum ShardMsg {
    /// Decide `rows` (distinct ids; one request's slice for this shard). The answer, one
    /// decision per row in order, comes after the commit that decided them.
    Submit(Vec<EventRow>, ShardReply),
    /// Start one group commit of what is queued (the shard sends this to itself).
    Flush,
    /// A group commit finished; `release` are the in-memory hash claims of rows that were
    /// not stored (the flush task sends this back).
    FlushDone { release: Vec<(String, Uuid)> },
}

/// Fixed at start (and restart).
#[derive(Clone)]
pub struct ShardArgs {
    pub store: EventStore,
    /// Where committed batches go to be published.
    pub relay: Slot<RelayMsg>,
    /// The Redis id cache (and hash window), when `REDIS_URL` is set.
    pub cache: Option<IdCache>,
    /// `Some(window)` in `eventIdAndHash` mode.
    pub hash_window: Option<Duration>,
    /// Most rows per group commit.
    pub max_group_rows: usize,
    /// Group commits of this shard running at once (each in its own task). 1 serializes
    /// the shard's statements; more overlap one statement's commit wait with the next.
    pub max_in_flight: usize,
    /// Bound of the database work of one flush.
    pub statement_timeout: Duration,
    /// Test-only failpoint (`SIDECAR_FAILPOINT=crash_after_commit`): abort the process
    /// right after a commit, before anyone is answered or anything published.
    pub crash_after_commit: bool,
}

#[derive(Clone)]
pub struct DedupeShard;

pub struct ShardState {
    args: ShardArgs,
    queue: VecDeque<(Vec<EventRow>, ShardReply)>,
    flush_scheduled: bool,
    in_flight: usize,
    /// The in-memory hash window (`eventIdAndHash` without Redis).
    window: Option<HashWindow>,
}

impl Actor for DedupeShard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            window: args.hash_window.map(|w| HashWindow::new(w, Instant::now())),
            args,
            queue: VecDeque::new(),
            flush_scheduled: false,
            in_flight: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Submit(rows, reply) => {
                if rows.is_empty() {
                    let _ = reply.send(Ok(Vec::new()));
                    return Ok(());
                }
                state.queue.push_back((rows, reply));
                schedule_flush(&myself, state)?;
            }
            ShardMsg::Flush => {
                state.flush_scheduled = false;
                if state.in_flight >= state.args.max_in_flight.max(1) {
                    // FlushDone schedules the next one.
                    return Ok(());
                }
                let mut group = Vec::new();
                let mut rows = 0;
                while let Some((next, _)) = state.queue.front() {
                    if !group.is_empty() && rows + next.len() > state.args.max_group_rows {
                        break;
                    }
                    rows += next.len();
                    group.extend(state.queue.pop_front());
                }
                if group.is_empty() {
                    return Ok(());
                }
                // The in-memory hash window is the shard's state: claims are made here,
                // before the task, and given back through FlushDone.
                let claims = claim_in_memory(state, &group);
                state.in_flight += 1;
                let args = state.args.clone();
                let me = myself.clone();
                tokio::spawn(async move {
                    let release = flush(args, group, claims).await;
                    let _ = me.cast(ShardMsg::FlushDone { release });
                });
                schedule_flush(&myself, state)?;
            }
            ShardMsg::FlushDone { release } => {
                state.in_flight = state.in_flight.saturating_sub(1);
                if let Some(window) = &mut state.window {
                    for (hash, id) in release {
                        window.release(&hash, id);
                    }
                }
                schedule_flush(&myself, state)?;
            }
        }
        Ok(())
    }
}

/// Asks for a Flush when there is work and room for another group commit.
fn schedule_flush(
    myself: &ActorRef<ShardMsg>,
    state: &mut ShardState,
) -> Result<(), ActorProcessingErr> {
    if !state.flush_scheduled
        && !state.queue.is_empty()
        && state.in_flight < state.args.max_in_flight.max(1)
    {
        state.flush_scheduled = true;
        myself.cast(ShardMsg::Flush)?;
    }
    Ok(())
}

/// The hash-window verdict of each row of `group` made in memory (`eventIdAndHash`
/// without Redis): `Some(true)` taken by another id, `Some(false)` claimed now, `None` not
/// judged here (Redis will, or the mode is off).
type MemoryClaims = Vec<Vec<Option<bool>>>;

fn claim_in_memory(state: &mut ShardState, group: &[(Vec<EventRow>, ShardReply)]) -> MemoryClaims {
    let use_memory = state.args.hash_window.is_some() && state.args.cache.is_none();
    let now = Instant::now();
    group
        .iter()
        .map(|(rows, _)| {
            rows.iter()
                .map(|r| match (&mut state.window, use_memory) {
                    (Some(window), true) => {
                        Some(window.claim(&r.event_hash, r.event_id, now).is_some())
                    }
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// Where a row sits: (request in the group, row in the request).
type At = (usize, usize);

/// One group commit (in its own task); returns the in-memory claims to give back.
async fn flush(
    args: ShardArgs,
    group: Vec<(Vec<EventRow>, ShardReply)>,
    memory: MemoryClaims,
) -> Vec<(String, Uuid)> {
    let mut decisions: Vec<Vec<Option<Decision>>> = group
        .iter()
        .map(|(rows, _)| vec![None; rows.len()])
        .collect();
    let row = |at: At| &group[at.0].0[at.1];

    // One candidate per distinct id; later copies (from other requests) follow the first.
    let mut first_of: HashMap<Uuid, At> = HashMap::new();
    let mut candidates: Vec<At> = Vec::new();
    let mut repeats: Vec<(At, At)> = Vec::new();
    for (g, (rows, _)) in group.iter().enumerate() {
        for (i, r) in rows.iter().enumerate() {
            match first_of.get(&r.event_id) {
                Some(&first) => repeats.push(((g, i), first)),
                None => {
                    first_of.insert(r.event_id, (g, i));
                    candidates.push((g, i));
                }
            }
        }
    }

    // Redis knows committed ids (and their stored hashes).
    if let Some(cache) = &args.cache {
        let ids: Vec<Uuid> = candidates.iter().map(|&at| row(at).event_id).collect();
        for (at, known) in candidates.iter().zip(cache.known(&ids).await) {
            if let Some(stored_hash) = known {
                decisions[at.0][at.1] = Some(Decision::Duplicate {
                    stored_hash: Some(stored_hash),
                });
            }
        }
    }

    // eventIdAndHash: claim each remaining hash for its id (Redis shared by the replicas,
    // else the shard's memory, judged before this task).
    let mut claims: Vec<At> = Vec::new();
    if let Some(window) = args.hash_window {
        for &at in &candidates {
            if decisions[at.0][at.1].is_some() {
                continue;
            }
            let taken = match (memory[at.0][at.1], &args.cache) {
                (Some(taken), _) => taken,
                (None, Some(cache)) => {
                    let r = row(at);
                    matches!(
                        cache.claim_hash(&r.event_hash, &r.event_id, window).await,
                        Claim::TakenBy(_)
                    )
                }
                (None, None) => false,
            };
            if taken {
                decisions[at.0][at.1] = Some(Decision::HashDuplicate);
            } else {
                claims.push(at);
            }
        }
    }

    let to_insert: Vec<At> = candidates
        .iter()
        .copied()
        .filter(|at| decisions[at.0][at.1].is_none())
        .collect();
    let batch_id = new_batch_id();
    let received_at = Utc::now().trunc_subsecs(6);
    let mut accepted_ids: Vec<Uuid> = Vec::new();
    let mut stored: HashMap<Uuid, String> = HashMap::new();
    if !to_insert.is_empty() {
        let refs: Vec<&EventRow> = to_insert.iter().map(|&at| row(at)).collect();
        let store = &args.store;
        let work = async {
            let accepted = store.insert_batch(batch_id, received_at, &refs).await?;
            if args.crash_after_commit && !accepted.is_empty() {
                tracing::error!("failpoint crash_after_commit: aborting after a commit");
                std::process::abort();
            }
            let conflicts: Vec<Uuid> = if accepted.len() == refs.len() {
                Vec::new()
            } else {
                let set: std::collections::HashSet<Uuid> = accepted.iter().copied().collect();
                refs.iter()
                    .map(|r| r.event_id)
                    .filter(|id| !set.contains(id))
                    .collect()
            };
            let stored = store.stored_hashes(&conflicts).await?;
            Ok::<_, super::store::StoreError>((accepted, stored))
        };
        match tokio::time::timeout(args.statement_timeout, work).await {
            Ok(Ok((accepted, hashes))) => {
                accepted_ids = accepted;
                stored = hashes;
            }
            outcome => {
                let reason = match outcome {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(error = %reason, rows = refs.len(), "group commit failed");
                let release = release_claims(&args, &claims, &group).await;
                for (_, reply) in group {
                    let _ = reply.send(Err(ShardError::StoreUnavailable));
                }
                return release;
            }
        }
    }
    let accepted_set: std::collections::HashSet<Uuid> = accepted_ids.iter().copied().collect();
    for &at in &to_insert {
        let id = row(at).event_id;
        decisions[at.0][at.1] = Some(if accepted_set.contains(&id) {
            Decision::Accepted
        } else {
            Decision::Duplicate {
                stored_hash: stored.get(&id).cloned(),
            }
        });
    }
    // A later copy of an id in the same group is a duplicate of the first copy's outcome.
    for (at, first) in repeats {
        let decision = match decisions[first.0][first.1].clone() {
            Some(Decision::Accepted) => Decision::Duplicate {
                stored_hash: Some(row(first).event_hash.clone()),
            },
            Some(other) => other,
            None => Decision::Duplicate { stored_hash: None },
        };
        decisions[at.0][at.1] = Some(decision);
    }
    // Claims of rows that were not stored are given back.
    let unstored: Vec<At> = claims
        .into_iter()
        .filter(|&at| !accepted_set.contains(&row(at).event_id))
        .collect();
    let release = release_claims(&args, &unstored, &group).await;

    // Remember what Redis should know: accepted ids and the conflicts' stored hashes.
    let mut remember: Vec<(Uuid, String)> = stored.into_iter().collect();
    let mut batch = CommittedBatch {
        batch_id,
        received_at,
        events: Vec::with_capacity(accepted_ids.len()),
    };
    for ((rows, reply), decided) in group.into_iter().zip(decisions) {
        let decided: Vec<Decision> = decided
            .into_iter()
            .map(|d| d.unwrap_or(Decision::Duplicate { stored_hash: None }))
            .collect();
        for (r, d) in rows.into_iter().zip(&decided) {
            if *d == Decision::Accepted && accepted_set.contains(&r.event_id) {
                remember.push((r.event_id, r.event_hash.clone()));
                batch.events.push(r);
            }
        }
        let _ = reply.send(Ok(decided));
    }
    if !batch.events.is_empty() {
        // The relay may be restarting: the sweeper publishes the batch from the table then.
        let _ = args.relay.cast(RelayMsg::Committed(batch));
    }
    if let Some(cache) = args.cache {
        if !remember.is_empty() {
            tokio::spawn(async move { cache.remember(&remember).await });
        }
    }
    release
}

/// Gives back the claims of `claims` (rows not stored): Redis now, memory through the
/// returned list.
async fn release_claims(
    args: &ShardArgs,
    claims: &[At],
    group: &[(Vec<EventRow>, ShardReply)],
) -> Vec<(String, Uuid)> {
    if claims.is_empty() {
        return Vec::new();
    }
    let rows: Vec<&EventRow> = claims.iter().map(|&(g, i)| &group[g].0[i]).collect();
    match &args.cache {
        Some(cache) => {
            let hashes: Vec<String> = rows.iter().map(|r| r.event_hash.clone()).collect();
            cache.release_hashes(&hashes).await;
            Vec::new()
        }
        None => rows
            .iter()
            .map(|r| (r.event_hash.clone(), r.event_id))
            .collect(),
    }
}
