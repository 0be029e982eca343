//! [`ChildSpec`]: how the supervisor starts (and restarts) one child, with the child's type
//! erased so that one supervisor can own actors of any message type.

use std::future::Future;
use std::pin::Pin;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message};

use super::Slot;

type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, ActorProcessingErr>> + Send>>;

/// Describes one supervised child: its name and how to start a fresh incarnation of it.
///
/// The start function is called once at start-up and again on every restart, each time
/// with the supervisor's [`ActorCell`]. It must spawn the actor *linked* to that cell
/// (`Actor::spawn_linked`), or the supervisor never hears of its death; an unlinked child
/// is linked after the fact, with a warning. The new `ActorRef` is written into the slot.
pub struct ChildSpec {
    name: String,
    start: Box<dyn Fn(ActorCell) -> StartFuture + Send + Sync>,
    /// Empties the child's slot, its message type erased.
    clear_slot: Box<dyn Fn() + Send + Sync>,
}

impl ChildSpec {
    /// A child started by `start`, which receives the supervisor's cell and must spawn the
    /// actor linked to it. Use this when starting takes more than spawning, e.g.
    ///
    /// ```
    /// # use actors::supervisor::{ChildSpec, Slot};
    /// # use ractor::{Actor, ActorProcessingErr, ActorRef};
    /// # #[derive(Clone)]
    /// # struct DedupeShard;
    /// # impl Actor for DedupeShard {
    /// #     type Msg = ();
    /// #     type State = ();
    /// #     type Arguments = u32;
    /// #     async fn pre_start(&self, _: ActorRef<()>, _: u32) -> Result<(), ActorProcessingErr> {
    /// #         Ok(())
    /// #     }
    /// # }
    /// # let (slot, args) = (Slot::<()>::new(), 3_u32);
    /// let spec = ChildSpec::new("dedupe_shard_3", slot, move |supervisor| {
    ///     let args = args.clone();
    ///     async move { Actor::spawn_linked(None, DedupeShard, args, supervisor).await }
    /// });
    /// ```
    ///
    /// Spawn with no ractor name (`None`): ractor names are process-global, and several
    /// trees (one per service instance in the integration tests) would collide. `name`
    /// lives only in the supervisor's bookkeeping, logs and metrics.
    pub fn new<M, F, Fut, E>(name: impl Into<String>, slot: Slot<M>, start: F) -> Self
    where
        M: Message,
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(ActorRef<M>, JoinHandle<()>), E>> + Send + 'static,
        E: Into<ActorProcessingErr>,
    {
        let writer = slot.clone();
        let start = move |supervisor: ActorCell| -> StartFuture {
            let spawned = start(supervisor);
            let slot = writer.clone();
            Box::pin(async move {
                // The join handle is not needed: the supervisor learns of the child's end
                // through ractor's supervision events.
                let (actor, _join) = spawned.await.map_err(Into::into)?;
                slot.set(actor.clone());
                Ok(actor.get_cell())
            })
        };
        Self {
            name: name.into(),
            start: Box::new(start),
            clear_slot: Box::new(move || slot.clear()),
        }
    }

    /// A child that is the actor `actor` started with `args`. Each restart spawns a clone
    /// of `actor` with a clone of `args`, so the new incarnation starts from the original
    /// arguments, not from whatever state the dead one had.
    pub fn actor<A>(
        name: impl Into<String>,
        actor: A,
        args: A::Arguments,
        slot: Slot<A::Msg>,
    ) -> Self
    where
        A: Actor + Clone,
        A::Arguments: Clone + Sync,
    {
        Self::new(name, slot, move |supervisor| {
            let (actor, args) = (actor.clone(), args.clone());
            async move { Actor::spawn_linked(None, actor, args, supervisor).await }
        })
    }

    /// The same child, spawned (and respawned) on `runtime` instead of the supervisor's:
    /// the actor's task, and every task it spawns, run there. The supervisor still links it
    /// and hears of its end as usual.
    pub fn on_runtime(self, runtime: tokio::runtime::Handle) -> Self {
        let inner = self.start;
        let name = self.name.clone();
        let start = move |supervisor: ActorCell| -> StartFuture {
            let spawned = runtime.spawn(inner(supervisor));
            let name = name.clone();
            Box::pin(async move {
                spawned.await.map_err(|err| -> ActorProcessingErr {
                    format!("starting {name} on its runtime failed: {err}").into()
                })?
            })
        };
        Self {
            start: Box::new(start),
            ..self
        }
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a fresh incarnation linked to `supervisor` and fills the slot.
    pub(super) fn start(&self, supervisor: ActorCell) -> StartFuture {
        (self.start)(supervisor)
    }

    pub(super) fn clear_slot(&self) {
        (self.clear_slot)();
    }
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
