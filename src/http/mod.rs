//! The HTTP layer: poem + poem-openapi. Handlers translate (parse, check bounds, call an
//! actor handle, map the answer); policy lives in the actors crate.
//!
//! - [`conventions`]: the middleware every route passes through (contract section 1).
//! - [`problem`]: the one mapping of errors to problem+json.
//! - [`context`], [`client_ip`]: request id, trace context and client address.
//! - [`security`]: the bearer scheme and the `Authenticator` behind it.
//! - [`text`]: a strict JSON string type for DTO fields.
//! - [`meta`], [`health`], [`docs`], [`auth`], [`events`], [`config`], [`preferences`]: one
//!   `#[OpenApi]` struct per route group.

pub mod auth;
pub mod client_ip;
pub mod config;
pub mod context;
pub mod conventions;
pub mod docs;
pub mod events;
pub mod health;
pub mod meta;
pub mod preferences;
pub mod problem;
pub mod security;
pub mod text;

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApi, OpenApiService, Tags};

use self::conventions::Conventions;
use self::docs::RenderedDocs;
use self::security::SharedAuthenticator;

#[derive(Tags)]
pub enum ApiTags {
    /// Login, MFA, refresh and logout, proxied to .NET.
    Auth,
    /// Client event ingestion.
    Events,
    /// Configuration and preferences.
    Config,
    /// Public metadata.
    Meta,
    /// Health, metrics and this document.
    Operations,
}

/// What the OpenAPI description says beyond the routes: the choices we made where the
/// contract is silent.
const DESCRIPTION: &str = include_str!("openapi_description.md");

/// Builds the whole HTTP application around `apis`: the OpenAPI service, its rendered
/// document and UI, the conventions middleware, and the `authenticator` that the bearer
/// scheme of every authenticated route asks.
pub fn build<T: OpenApi + 'static>(
    apis: T,
    docs: RenderedDocs,
    trusted_proxies: Vec<IpNet>,
    max_body_bytes: usize,
    authenticator: SharedAuthenticator,
) -> impl Endpoint<Output = poem::Response> + 'static {
    let service =
        OpenApiService::new(apis, "sidecar", env!("CARGO_PKG_VERSION")).description(DESCRIPTION);
    let spec: serde_json::Value = serde_json::from_str(&service.spec()).unwrap_or_default();
    // Route template -> its methods, for metric labels and the `Allow` header of a 405.
    let routes: HashMap<String, String> = spec
        .get("paths")
        .and_then(|p| p.as_object())
        .map(|paths| {
            paths
                .iter()
                .map(|(path, ops)| {
                    let methods: Vec<String> = ops
                        .as_object()
                        .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                        .unwrap_or_default();
                    (path.clone(), methods.join(", "))
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = docs.ui.set(service.swagger_ui_html());
    let _ = docs.spec.set(spec);
    Route::new()
        .nest("/", service)
        .data(authenticator)
        .with(Conventions {
            trusted_proxies: Arc::new(trusted_proxies),
            routes: Arc::new(routes),
            max_body_bytes,
        })
}
