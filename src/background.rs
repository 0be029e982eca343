//! The background runtime: where the event path's background actors (outbox relay,
//! aggregator, janitor) run, apart from the request path.
//!
//! Why: under a burst of `POST /events` the relay and the aggregator always have work (the
//! outbox, the consumer lag), and on the request path's runtime they took about half of
//! the sidecar's cycles (profile in BENCHMARKS.md). On one worker thread of their own they
//! can never take more than one core from the requests, and their NATS connections and
//! database pool are driven there too. Measured side by side (batch 100, 16 clients, three
//! runs each): the same peak, and the end-to-end sustained rate 37.8k → 39.9k events/s.
//! (Running that thread at a lower CPU priority was tried too: +4% peak, −10% sustained,
//! since the JetStream server it feeds is most of the pipeline's cost; not kept.)
//!
//! Connections are opened on this runtime (NATS, and on PostgreSQL a small pool of its
//! own), so that request tasks and background tasks never share a socket across runtimes.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};

pub struct Background {
    runtime: Option<Runtime>,
}

impl Background {
    /// One worker thread, named `sidecar-bg`.
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("sidecar-bg")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("the background runtime lives until drop")
            .handle()
            .clone()
    }

    /// Runs `task` on the background runtime and waits for its result (to open connections
    /// there).
    pub async fn run<F>(&self, task: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.handle().spawn(task).await?)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime (the
        // application is dropped there); the actors are stopped by then.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
