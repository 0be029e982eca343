//! The supervisor with real (small) actors, on tokio's paused clock: backoffs and windows
//! elapse instantly and exactly, so the tests are fast and deterministic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};
use tokio::time::Instant;

use super::*;

/// A test actor that counts its incarnations and fails on demand.
#[derive(Clone)]
struct Worker;

/// Shared with the test, so it sees every incarnation.
#[derive(Clone, Default)]
struct WorkerArgs {
    /// When each incarnation started (`pre_start`), in order.
    starts: Arc<Mutex<Vec<Instant>>>,
    /// How many of the next incarnations panic in `post_start` (a crash loop).
    crash_on_start: Arc<AtomicUsize>,
    /// Whether `pre_start` fails (for start-up failures).
    refuse_to_start: bool,
    /// The thread each incarnation started on (by name).
    threads: Arc<Mutex<Vec<String>>>,
}

impl WorkerArgs {
    fn crashing(times: usize) -> Self {
        let args = Self::default();
        args.crash_on_start.store(times, Ordering::SeqCst);
        args
    }

    fn start_count(&self) -> usize {
        self.starts.lock().unwrap().len()
    }
}

enum WorkerMsg {
    /// Answers the incarnation number (1 for the first).
    Ping(RpcReplyPort<usize>),
    /// Panics in the handler.
    Panic,
    /// Returns `Err` from the handler.
    Fail,
    /// Panics while a caller waits for the answer.
    PanicWhileCalled(RpcReplyPort<usize>),
    /// Keeps the reply port and never answers.
    Ignore(RpcReplyPort<usize>),
}

struct WorkerState {
    incarnation: usize,
    crash_on_start: Arc<AtomicUsize>,
    ignored: Vec<RpcReplyPort<usize>>,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        if args.refuse_to_start {
            return Err("refusing to start".into());
        }
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        args.threads.lock().unwrap().push(thread);
        let mut starts = args.starts.lock().unwrap();
        starts.push(Instant::now());
        Ok(WorkerState {
            incarnation: starts.len(),
            crash_on_start: args.crash_on_start.clone(),
            ignored: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        _: ActorRef<WorkerMsg>,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let crash = state
            .crash_on_start
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        assert!(!crash, "injected crash on start");
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Ping(reply) => {
                let _ = reply.send(state.incarnation);
            }
            WorkerMsg::Panic => panic!("injected panic"),
            WorkerMsg::Fail => return Err("injected error".into()),
            WorkerMsg::PanicWhileCalled(_reply) => panic!("injected panic during a call"),
            WorkerMsg::Ignore(reply) => state.ignored.push(reply),
        }
        Ok(())
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn ping(slot: &Slot<WorkerMsg>) -> Result<usize, CallError> {
    slot.call(WorkerMsg::Ping, ms(100)).await
}

/// Polls `condition` every (virtual) millisecond, for at most 10 virtual seconds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(ms(1)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn start_one(
    name: &str,
    args: &WorkerArgs,
    builder: SupervisorBuilder,
) -> (SupervisorHandle, SupervisorHealth, Slot<WorkerMsg>) {
    let slot = Slot::new();
    let (tree, health) = builder
        .child(ChildSpec::actor(name, Worker, args.clone(), slot.clone()))
        .start()
        .await
        .expect("the tree starts");
    (tree, health, slot)
}

/// The child dies by `kill`, is restarted once, and the slot then reaches the new one.
async fn assert_restarted_after(kill: WorkerMsg) {
    let args = WorkerArgs::default();
    let builder = Supervisor::builder().backoff(ms(10), ms(100));
    let (tree, health, slot) = start_one("worker", &args, builder).await;
    assert_eq!(ping(&slot).await, Ok(1));
    assert_eq!(health.restarts("worker"), Some(0));
    let first = slot.get().unwrap();

    slot.cast(kill).unwrap();
    eventually("the child to wait for its restart", || {
        health.status("worker") == Some(ChildStatus::Restarting)
    })
    .await;
    // While it restarts, callers fail fast instead of reaching the dead actor.
    assert_eq!(ping(&slot).await, Err(CallError::Unavailable));
    assert_eq!(first.get_status(), ActorStatus::Stopped);

    eventually("the restart", || health.all_up()).await;
    assert_eq!(health.restarts("worker"), Some(1));
    assert_eq!(ping(&slot).await, Ok(2));
    assert_ne!(slot.get().unwrap().get_id(), first.get_id());
    assert!(!health.is_escalated());

    tree.shutdown(ms(500)).await.unwrap();
    assert_eq!(health.tree_state(), TreeState::Stopped);
    assert_eq!(ping(&slot).await, Err(CallError::Unavailable));
}

/// A child placed on another runtime starts there, and its restart does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_child_on_another_runtime_starts_and_restarts_there() {
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("other-runtime")
        .enable_all()
        .build()
        .unwrap();
    let args = WorkerArgs::default();
    let slot = Slot::new();
    let (tree, health) = Supervisor::builder()
        .backoff(ms(10), ms(100))
        .child(
            ChildSpec::actor("worker", Worker, args.clone(), slot.clone())
                .on_runtime(other.handle().clone()),
        )
        .start()
        .await
        .expect("the tree starts");
    assert_eq!(ping(&slot).await, Ok(1));
    slot.cast(WorkerMsg::Panic).unwrap();
    for _ in 0..200 {
        if ping(&slot).await == Ok(2) {
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert_eq!(ping(&slot).await, Ok(2));
    assert_eq!(health.restarts("worker"), Some(1));
    assert_eq!(
        *args.threads.lock().unwrap(),
        vec!["other-runtime".to_owned(), "other-runtime".to_owned()]
    );
    tree.shutdown(ms(500)).await.unwrap();
    other.shutdown_background();
}

#[tokio::test(start_paused = true)]
async fn a_child_that_panics_is_restarted_behind_the_same_slot() {
    assert_restarted_after(WorkerMsg::Panic).await;
}

#[tokio::test(start_paused = true)]
async fn a_child_whose_handler_fails_is_restarted_behind_the_same_slot() {
    assert_restarted_after(WorkerMsg::Fail).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_escalates_and_stops_the_whole_tree() {
    let steady_slot = Slot::new();
    let crashy = WorkerArgs::crashing(usize::MAX);
    let (tree, health) = Supervisor::builder()
        .intensity(3, Duration::from_secs(30))
        .backoff(ms(10), ms(100))
        .child(ChildSpec::actor(
            "steady",
            Worker,
            WorkerArgs::default(),
            steady_slot.clone(),
        ))
        .child(ChildSpec::actor(
            "crashy",
            Worker,
            crashy.clone(),
            Slot::new(),
        ))
        .start()
        .await
        .unwrap();
    let steady = steady_slot.get().unwrap();

    let reason = tokio::time::timeout(Duration::from_secs(5), health.escalated())
        .await
        .expect("the tree escalates");
    assert!(reason.contains("crashy"), "{reason}");
    tokio::time::timeout(Duration::from_secs(5), tree.wait())
        .await
        .expect("the supervisor stops");

    assert!(health.is_escalated());
    assert!(!health.all_up());
    assert_eq!(health.restarts("crashy"), Some(3));
    assert_eq!(
        crashy.start_count(),
        4,
        "the first start and three restarts"
    );
    assert_eq!(steady.get_status(), ActorStatus::Stopped);
    assert_eq!(ping(&steady_slot).await, Err(CallError::Unavailable));
    assert!(health
        .children_status()
        .iter()
        .all(|(_, status)| *status == ChildStatus::Stopped));
    // Shutting down an escalated tree is a no-op, and does not hide the escalation.
    tree.shutdown(ms(100)).await.unwrap();
    assert!(health.is_escalated());
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_beyond_the_window_do_not_escalate() {
    let args = WorkerArgs::default();
    let builder = Supervisor::builder()
        .intensity(2, ms(200))
        .backoff(ms(10), ms(10));
    let (tree, health, slot) = start_one("worker", &args, builder).await;
    for round in 1..=5 {
        slot.cast(WorkerMsg::Panic).unwrap();
        eventually("the restart", || health.restarts("worker") == Some(round)).await;
        eventually("the child to be up", || health.all_up()).await;
        tokio::time::sleep(ms(250)).await;
    }
    assert!(!health.is_escalated());
    assert_eq!(ping(&slot).await, Ok(6));
    tree.shutdown(ms(500)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_pending_restart_spawns_nothing() {
    let args = WorkerArgs::default();
    let builder = Supervisor::builder().backoff(Duration::from_secs(1), Duration::from_secs(1));
    let (tree, health, slot) = start_one("worker", &args, builder).await;
    slot.cast(WorkerMsg::Panic).unwrap();
    eventually("the child to wait for its restart", || {
        health.status("worker") == Some(ChildStatus::Restarting)
    })
    .await;

    tokio::time::timeout(ms(500), tree.shutdown(ms(200)))
        .await
        .expect("shutdown returns")
        .unwrap();
    // Long past the backoff: the cancelled restart never happens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(args.start_count(), 1);
    assert_eq!(health.restarts("worker"), Some(0));
    assert_eq!(health.status("worker"), Some(ChildStatus::Stopped));
    assert_eq!(health.tree_state(), TreeState::Stopped);
    assert!(!slot.is_available());
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_between_consecutive_restarts() {
    let args = WorkerArgs::crashing(3);
    let builder = Supervisor::builder()
        .intensity(10, Duration::from_secs(60))
        .backoff(ms(100), Duration::from_secs(5));
    let (tree, health, slot) = start_one("worker", &args, builder).await;
    eventually("the fourth incarnation", || {
        args.start_count() == 4 && health.all_up()
    })
    .await;

    let starts = args.starts.lock().unwrap().clone();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, backoff) in gaps.iter().zip([100, 200, 400].map(ms)) {
        assert!(
            *gap >= backoff && *gap < backoff + ms(20),
            "gaps {gaps:?} should follow 100, 200, 400 ms"
        );
    }
    assert_eq!(health.restarts("worker"), Some(3));
    assert_eq!(ping(&slot).await, Ok(4));
    tree.shutdown(ms(500)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_child_that_cannot_start_fails_start_up_and_stops_its_elders() {
    let first = Slot::new();
    let broken = WorkerArgs {
        refuse_to_start: true,
        ..WorkerArgs::default()
    };
    // A hand-written start function, which also keeps the ref to check it stopped.
    let spawned: Arc<Mutex<Option<ActorRef<WorkerMsg>>>> = Arc::default();
    let keep = spawned.clone();
    let result = Supervisor::builder()
        .child(ChildSpec::new("first", first.clone(), move |supervisor| {
            let keep = keep.clone();
            async move {
                let (actor, join) =
                    Actor::spawn_linked(None, Worker, WorkerArgs::default(), supervisor).await?;
                *keep.lock().unwrap() = Some(actor.clone());
                Ok::<_, ractor::SpawnErr>((actor, join))
            }
        }))
        .child(ChildSpec::actor("broken", Worker, broken, Slot::new()))
        .start()
        .await;

    match result {
        Err(StartError::ChildFailed { name, .. }) => assert_eq!(name, "broken"),
        other => panic!("expected ChildFailed, got {other:?}"),
    }
    let first_actor = spawned.lock().unwrap().clone().expect("first was started");
    assert_eq!(first_actor.get_status(), ActorStatus::Stopped);
    assert!(!first.is_available());
}

#[tokio::test(start_paused = true)]
async fn duplicate_child_names_are_refused() {
    let result = Supervisor::builder()
        .child(ChildSpec::actor(
            "same",
            Worker,
            WorkerArgs::default(),
            Slot::new(),
        ))
        .child(ChildSpec::actor(
            "same",
            Worker,
            WorkerArgs::default(),
            Slot::new(),
        ))
        .start()
        .await;
    assert_eq!(
        result.err(),
        Some(StartError::DuplicateChild("same".to_owned()))
    );
}

#[tokio::test(start_paused = true)]
async fn calls_report_timeouts_and_failures() {
    let args = WorkerArgs::default();
    let builder = Supervisor::builder().backoff(ms(10), ms(10));
    let (tree, health, slot) = start_one("worker", &args, builder).await;

    assert_eq!(
        slot.call(WorkerMsg::Ignore, ms(50)).await,
        Err(CallError::Timeout)
    );
    assert_eq!(
        slot.call(WorkerMsg::PanicWhileCalled, ms(50)).await,
        Err(CallError::Failed)
    );
    eventually("the restart", || health.all_up()).await;
    assert_eq!(ping(&slot).await, Ok(2));
    tree.shutdown(ms(500)).await.unwrap();
}
