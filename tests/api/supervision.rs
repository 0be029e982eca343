//! The supervision tree as the service runs it: a crashing child is restarted and counted;
//! one that crashes in a loop escalates, `/health/live` turns 503 and the service exits
//! non-zero (main maps `ExitReason::Escalated` to exit code 1).

use std::time::Duration;

use actors::supervisor::{ChildSpec, Slot};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sidecar::app::ExitReason;

use crate::helpers::{eventually, TestApp};

/// An actor that panics on request.
#[derive(Clone)]
struct Fragile;

enum FragileMsg {
    Crash,
}

impl Actor for Fragile {
    type Msg = FragileMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: FragileMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FragileMsg::Crash => panic!("fragile actor asked to crash"),
        }
    }
}

#[tokio::test]
async fn a_crashed_child_is_restarted_counted_and_reachable_again() {
    let slot: Slot<FragileMsg> = Slot::new();
    let Some(app) = TestApp::builder()
        .child(ChildSpec::actor("fragile", Fragile, (), slot.clone()))
        .spawn()
        .await
    else {
        return;
    };
    slot.cast(FragileMsg::Crash).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.tree.restarts("fragile") == Some(1) && slot.is_available()
        })
        .await
    );
    assert_eq!(app.get("/health/live").await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("sidecar_actor_restarts_total{actor=\"fragile\"}"),
        "{metrics}"
    );
    assert_eq!(app.shutdown().await, ExitReason::Stopped);
}

#[tokio::test]
async fn a_crash_loop_escalates_live_turns_503_and_the_service_exits_non_zero() {
    let slot: Slot<FragileMsg> = Slot::new();
    let Some(app) = TestApp::builder()
        .env("SUPERVISOR_MAX_RESTARTS", "2")
        .env("SUPERVISOR_WINDOW_SECONDS", "30")
        .child(ChildSpec::actor("fragile", Fragile, (), slot.clone()))
        .spawn()
        .await
    else {
        return;
    };
    // Crash it every time it comes back, until the tree gives up.
    let crasher = {
        let slot = slot.clone();
        tokio::spawn(async move {
            loop {
                let _ = slot.cast(FragileMsg::Crash);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.tree.is_escalated()
        })
        .await
    );
    crasher.abort();
    let live = app.get("/health/live").await;
    assert_eq!(live.status(), 503);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        app.wait_exit(Duration::from_secs(10)).await,
        ExitReason::Escalated
    );
}
