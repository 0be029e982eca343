//! sidecar: a Rust service beside a .NET backend (see README.md and ../shared/CONTRACT.md).
//!
//! Map of the crate:
//! - [`app`]: `Application::build(settings)` and `run_until_stopped(shutdown)`.
//! - [`abuse`]: the rate limiter and backpressure controller of `POST /events`.
//! - [`settings`]: the typed, validated settings tree (CONTRACT.md section 11).
//! - [`telemetry`]: JSON logs and the Prometheus recorder.
//! - [`http`]: routes (one module per group), conventions middleware, problem+json.
//! - [`auth`]: the auth flows proxied to .NET (admin MFA rule, refresh coalescing).
//! - [`identity`]: who the caller is (JWKS verification or introspection), behind the
//!   bearer scheme.
//! - [`events`]: wiring of the event path's actors and the `POST /events` handle.
//! - [`store`]: the sea-orm connection and migrations at start-up.
//! - [`readiness`]: probes behind `/health/ready`.
//! - [`domain`]: the contract's enumerations.
//!
//! Actors and pure logic live in the `actors` crate; migrations in `migrations`.

// poem-openapi's `header(name = .., ty = ..)` lists repeat `ty`, which this lint mistakes
// for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod abuse;
pub mod app;
pub mod auth;
pub mod background;
pub mod domain;
pub mod events;
pub mod http;
pub mod identity;
pub mod readiness;
pub mod settings;
pub mod store;
pub mod telemetry;
