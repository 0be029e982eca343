//! `Janitor`: removes what is past the retention (`EVENT_MAX_AGE_DAYS`) in small batches:
//! events of *published* batches older than the retention (never an unpublished one), the
//! batch rows they leave empty, and the aggregator's counted ids. Each statement deletes at
//! most `chunk` rows and the janitor pauses between them, so it never holds long locks or
//! competes with the hot path for long.

use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::store::EventStore;

pub enum JanitorMsg {
    /// Delete one round of expired rows (the janitor sends this to itself).
    Tick,
}

#[derive(Clone)]
pub struct JanitorArgs {
    pub store: EventStore,
    pub retention: Duration,
    /// Time between rounds when there was nothing (more) to delete.
    pub interval: Duration,
    /// Rows per statement.
    pub chunk: i64,
    /// Pause between two statements of one round.
    pub pause: Duration,
    /// Bound of each statement.
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct Janitor;

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = JanitorArgs;
    type Arguments = JanitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JanitorMsg>,
        args: JanitorArgs,
    ) -> Result<JanitorArgs, ActorProcessingErr> {
        myself.send_after(Duration::from_secs(5).min(args.interval), || {
            JanitorMsg::Tick
        });
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<JanitorMsg>,
        msg: JanitorMsg,
        args: &mut JanitorArgs,
    ) -> Result<(), ActorProcessingErr> {
        let JanitorMsg::Tick = msg;
        let cutoff = Utc::now()
            - chrono::Duration::from_std(args.retention).unwrap_or(chrono::Duration::days(30));
        let deleted =
            tokio::time::timeout(args.timeout, args.store.delete_expired(cutoff, args.chunk)).await;
        let next = match deleted {
            // A full chunk: there is probably more; go on after a short pause.
            Ok(Ok(n)) if n >= args.chunk as u64 => args.pause,
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::info!(rows = n, "janitor removed expired rows");
                }
                args.interval
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "janitor round failed");
                args.interval
            }
            Err(_) => {
                tracing::warn!("janitor round timed out");
                args.interval
            }
        };
        myself.send_after(next, || JanitorMsg::Tick);
        Ok(())
    }
}
