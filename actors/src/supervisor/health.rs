//! What the rest of the process can see of a supervision tree without talking to it:
//! whether it escalated (for `/health/live` and the exit code), and each child's status and
//! restart count (for `/health/ready`). Reads are lock-free atomics or a `watch` borrow, so
//! probes never wait on the supervisor's mailbox.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

/// Where one supervised child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildStatus {
    /// Running; its [`Slot`](super::Slot) points at the live actor.
    Up,
    /// It died and waits for its backoff to elapse; its slot is empty.
    Restarting,
    /// Not started yet, or stopped by shutdown or escalation.
    Stopped,
}

impl ChildStatus {
    /// The lower-case name used in logs and in the readiness body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }

    /// True for [`ChildStatus::Up`].
    pub fn is_up(self) -> bool {
        self == Self::Up
    }

    fn from_u8(raw: u8) -> Self {
        match raw {
            0 => Self::Up,
            1 => Self::Restarting,
            _ => Self::Stopped,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Up => 0,
            Self::Restarting => 1,
            Self::Stopped => 2,
        }
    }
}

/// The state of the tree as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeState {
    /// The supervisor runs and restarts children that die.
    Running,
    /// Shut down on request; not a failure.
    Stopped,
    /// A child exceeded its restart intensity (or the supervisor itself died): the tree
    /// stopped, the service is no longer live and the process should exit non-zero.
    Escalated {
        /// Why, for the log line and the liveness body.
        reason: String,
    },
}

/// One child, as `/health/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildReport {
    /// The child's name in the supervisor (also the `actor` label of the restart metric).
    pub name: String,
    /// Its current status.
    pub status: ChildStatus,
    /// How many times it has been restarted since start-up.
    pub restarts: u64,
}

/// A cloneable, read-only view of one supervision tree's health.
#[derive(Clone)]
pub struct SupervisorHealth {
    inner: Arc<Inner>,
}

struct Inner {
    /// One entry per child, in start order; the set of children never changes after
    /// start-up, so the vector needs no lock.
    children: Vec<ChildEntry>,
    /// The tree's state; a `watch` so that [`SupervisorHealth::escalated`] can await it.
    tree: watch::Sender<TreeState>,
    /// Set once the supervisor actor has exited, whatever the reason.
    exited: watch::Sender<bool>,
    /// Set by [`super::SupervisorHandle::shutdown`], so that a supervisor killed by an
    /// overrunning shutdown is not mistaken for one that died on its own.
    shutdown_requested: AtomicBool,
}

struct ChildEntry {
    name: String,
    status: AtomicU8,
    restarts: AtomicU64,
}

// Every atomic here is an independent value that publishes no other memory, so `Relaxed`
// is enough: a reader only needs to see some recent value of each.
const ORDER: Ordering = Ordering::Relaxed;

impl SupervisorHealth {
    pub(super) fn new(names: &[String]) -> Self {
        let children = names
            .iter()
            .map(|name| ChildEntry {
                name: name.clone(),
                status: AtomicU8::new(ChildStatus::Stopped.to_u8()),
                restarts: AtomicU64::new(0),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                children,
                tree: watch::Sender::new(TreeState::Running),
                exited: watch::Sender::new(false),
                shutdown_requested: AtomicBool::new(false),
            }),
        }
    }

    /// The tree's current state.
    pub fn tree_state(&self) -> TreeState {
        self.inner.tree.borrow().clone()
    }

    /// True once the tree has escalated: `/health/live` answers 503 from then on.
    pub fn is_escalated(&self) -> bool {
        matches!(*self.inner.tree.borrow(), TreeState::Escalated { .. })
    }

    /// Resolves with the reason when the tree escalates (immediately if it already has);
    /// never resolves for a tree that is shut down normally. The binary selects on this to
    /// exit non-zero.
    pub async fn escalated(&self) -> String {
        let mut states = self.inner.tree.subscribe();
        loop {
            if let TreeState::Escalated { reason } = &*states.borrow_and_update() {
                return reason.clone();
            }
            if states.changed().await.is_err() {
                // Only if the sender were dropped, and `self.inner` holds it: wait forever,
                // as for any tree that never escalates.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Every child's name and status, in start order.
    pub fn children_status(&self) -> Vec<(String, ChildStatus)> {
        self.inner
            .children
            .iter()
            .map(|child| (child.name.clone(), child.status()))
            .collect()
    }

    /// Every child's name, status and restart count, in start order.
    pub fn children(&self) -> Vec<ChildReport> {
        self.inner
            .children
            .iter()
            .map(|child| ChildReport {
                name: child.name.clone(),
                status: child.status(),
                restarts: child.restarts.load(ORDER),
            })
            .collect()
    }

    /// The children's names, in start order (e.g. to create their metric series).
    pub fn child_names(&self) -> Vec<String> {
        self.inner.children.iter().map(|c| c.name.clone()).collect()
    }

    /// True when the tree runs and every child is up: part of `/health/ready`.
    pub fn all_up(&self) -> bool {
        *self.inner.tree.borrow() == TreeState::Running
            && self
                .inner
                .children
                .iter()
                .all(|child| child.status().is_up())
    }

    /// The status of the child called `name`, if there is one.
    pub fn status(&self, name: &str) -> Option<ChildStatus> {
        self.entry(name).map(ChildEntry::status)
    }

    /// How many times the child called `name` has been restarted, if there is one.
    pub fn restarts(&self, name: &str) -> Option<u64> {
        self.entry(name).map(|child| child.restarts.load(ORDER))
    }

    fn entry(&self, name: &str) -> Option<&ChildEntry> {
        self.inner.children.iter().find(|child| child.name == name)
    }

    // ----- written by the supervisor and its handle only -----

    pub(super) fn child_count(&self) -> usize {
        self.inner.children.len()
    }

    pub(super) fn set_status(&self, child: usize, status: ChildStatus) {
        self.inner.children[child]
            .status
            .store(status.to_u8(), ORDER);
    }

    pub(super) fn record_restart(&self, child: usize) {
        self.inner.children[child].restarts.fetch_add(1, ORDER);
    }

    /// Running -> Escalated. A tree already stopped stays as it is.
    pub(super) fn mark_escalated(&self, reason: String) {
        self.inner.tree.send_if_modified(|state| {
            if *state != TreeState::Running {
                return false;
            }
            *state = TreeState::Escalated { reason };
            true
        });
    }

    /// Running -> Stopped. An escalation is never overwritten by the shutdown that follows.
    pub(super) fn mark_stopped(&self) {
        self.inner.tree.send_if_modified(|state| {
            if *state != TreeState::Running {
                return false;
            }
            *state = TreeState::Stopped;
            true
        });
    }

    pub(super) fn request_shutdown(&self) {
        self.inner.shutdown_requested.store(true, ORDER);
    }

    /// Called when the supervisor actor's task has ended. If the supervisor neither shut
    /// down nor escalated on its own, it died (a bug, or a kill): that is an escalation too,
    /// unless a shutdown asked for it.
    pub(super) fn mark_exited(&self) {
        for child in 0..self.child_count() {
            self.set_status(child, ChildStatus::Stopped);
        }
        if self.inner.shutdown_requested.load(ORDER) {
            self.mark_stopped();
        } else {
            self.mark_escalated("the supervisor terminated unexpectedly".to_owned());
        }
        self.inner.exited.send_replace(true);
    }

    pub(super) fn has_exited(&self) -> bool {
        *self.inner.exited.borrow()
    }

    pub(super) async fn wait_exited(&self) {
        let mut exited = self.inner.exited.subscribe();
        // Cannot fail: the sender lives in `self.inner`.
        let _ = exited.wait_for(|exited| *exited).await;
    }
}

impl ChildEntry {
    fn status(&self) -> ChildStatus {
        ChildStatus::from_u8(self.status.load(ORDER))
    }
}

impl std::fmt::Debug for SupervisorHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorHealth")
            .field("tree", &self.tree_state())
            .field("children", &self.children())
            .finish()
    }
}
