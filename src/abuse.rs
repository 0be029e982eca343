//! The abuse controls of `POST /events` (contract section 6), built from the settings: the
//! rate limiter (a handle called from the request task) and the backpressure controller (a
//! supervised child) with the signal the handler reads.

use std::sync::Arc;
use std::time::Duration;

use actors::backpressure::{
    BacklogSource, BackpressureController, BackpressureHandle, BackpressureSignal, ControllerArgs,
    Watermarks,
};
use actors::rate_limiter::{Limits, RateLimiter, RateLimiterConfig};
use actors::supervisor::{ChildSpec, Slot};
use anyhow::Context;
use futures::future::BoxFuture;

use crate::readiness::{ProbeReport, ReadinessProbe};
use crate::settings::Settings;

/// The supervised child's name (logs, metrics, health).
pub const CONTROLLER_NAME: &str = "backpressure";

/// How long start-up waits for Redis before starting on the in-memory fallback.
const REDIS_CONNECT_WITHIN: Duration = Duration::from_secs(1);

/// What the `/events` handler consults before it does any work.
#[derive(Clone)]
pub struct AbuseControls {
    pub limiter: RateLimiter,
    /// Read on every request, never waited on.
    pub backpressure: BackpressureSignal,
    /// Asks the controller for a reading now (tests, diagnostics).
    pub controller: BackpressureHandle,
}

/// Builds the limiter and the controller's child spec. `jetstream` is `None` when
/// `NATS_URL` is unset; `backlog` is the outbox's.
pub async fn build(
    settings: &Settings,
    jetstream: Option<async_nats::jetstream::Context>,
    backlog: Arc<dyn BacklogSource>,
) -> anyhow::Result<(AbuseControls, ChildSpec)> {
    let limits = &settings.rate_limits;
    let mut config = RateLimiterConfig::new(
        Limits {
            user: limits.user,
            device: limits.device,
            ip: limits.ip,
        },
        settings.redis_key_prefix.clone(),
    );
    config.redis_timeout = limits.redis_timeout;
    let limiter = match &settings.redis_url {
        Some(url) => RateLimiter::connect(config, url.expose(), REDIS_CONNECT_WITHIN)
            .await
            .context("REDIS_URL")?,
        None => RateLimiter::in_memory(config),
    };

    let (publisher, signal) = BackpressureSignal::channel();
    let slot = Slot::new();
    let args = ControllerArgs {
        jetstream,
        stream: settings.events.stream.clone(),
        consumers: settings.backpressure.consumers.clone(),
        marks: Watermarks {
            high: settings.backpressure.high,
            low: settings.backpressure.low,
        },
        backlog,
        publisher,
        poll_every: ControllerArgs::DEFAULT_POLL_EVERY,
        ask_timeout: ControllerArgs::DEFAULT_ASK_TIMEOUT,
    };
    let child = ChildSpec::actor(CONTROLLER_NAME, BackpressureController, args, slot.clone());
    let controls = AbuseControls {
        limiter,
        backpressure: signal,
        controller: BackpressureHandle::new(slot),
    };
    Ok((controls, child))
}

/// Always ready (the limits degrade, never stop), but says so when they are per replica.
pub struct RateLimitProbe {
    pub limiter: RateLimiter,
    pub redis_configured: bool,
}

impl ReadinessProbe for RateLimitProbe {
    fn check(&self) -> BoxFuture<'_, Vec<ProbeReport>> {
        let detail = match (self.redis_configured, self.limiter.redis_up()) {
            (false, _) => Some("REDIS_URL is unset: rate limits are per replica".to_owned()),
            (true, false) => {
                Some("Redis is unreachable: rate limits are per replica until it answers".into())
            }
            (true, true) => None,
        };
        Box::pin(async move {
            vec![ProbeReport {
                name: "rate_limits".into(),
                ready: true,
                detail,
            }]
        })
    }
}
