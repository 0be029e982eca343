//! The background runtime: where the event path's background actors (outbox relay,
//! aggregator, janitor) run, apart from the request path.
//!
//! Why: under a burst of `POST /events` the relay and the aggregator always have work (the
//! outbox, the consumer lag), and on the request path's runtime they took about half of
//! the sidecar's cycles (profile in BENCHMARKS.md). Here they get one worker thread of their
//! own, at a lower CPU priority (`EVENT_PIPELINE_NICE`, nice 10 by default): requests are
//! served first, the outbox absorbs a burst, and when it ends the background takes the idle
//! CPU and drains it. Backpressure (429 when the consumers lag past `BACKPRESSURE_*`)
//! bounds what a burst may leave behind, so a load the pipeline cannot sustain is still
//! refused rather than queued without end.
//!
//! Measured side by side (BENCHMARKS.md, "Where the time goes"): at batch 1 this is what
//! lifts the request rate (the same runtime: 5.4k events/s; own thread at nice 0: 4.7-4.9k,
//! the thread hopping costs; at nice 10: 5.9-6.1k); at batch 100 the peak gains a few per
//! cent and the end-to-end sustained rate gives up about as much.
//!
//! Connections are opened on this runtime (NATS, and on PostgreSQL a small pool of its
//! own), so that a request never waits on a socket whose readiness only this thread
//! would notice.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};

pub struct Background {
    runtime: Option<Runtime>,
}

impl Background {
    /// One worker thread named `sidecar-bg`, at `nice` (0: the request path's priority).
    pub fn start(nice: u32) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("sidecar-bg")
            .enable_all()
            .on_thread_start(move || lower_priority(nice))
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

/// Lowers the calling thread's CPU priority (on Linux, nice is per thread). Raising one's
/// own nice needs no privilege; should it fail, the thread keeps the normal priority,
/// which is only slower.
fn lower_priority(nice: u32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: two syscalls about the calling thread; no memory is shared with them.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice as libc::c_int)
        };
        if rc != 0 {
            tracing::debug!("could not lower the background thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
