//! Who the caller is (contract 3.5): the [`Authenticator`] behind the bearer security
//! scheme of every authenticated route.
//!
//! - [`jwt`]: local verification against the JWKS when `JWT_ISSUER` and `JWT_AUDIENCE` are
//!   set (keys from `JWT_JWKS_URL`, else .NET's `/.well-known/jwks.json`).
//! - [`keys`]: the JWKS key cache and its refetch / staleness rules.
//! - [`introspection`]: otherwise, `POST /auth/introspect` at .NET with a short cache.
//!
//! Every verdict is 200-or-401, except when no verdict can be reached (no keys, .NET
//! unreachable): then 503 `upstream_unavailable`, never a misleading 401. Tokens are
//! never logged; a refusal logs its reason only.

pub mod introspection;
pub mod jwt;
pub mod keys;

use std::sync::Arc;

use actors::bridge::{BridgeHandle, ForwardHeaders, UpstreamError};
use futures::future::BoxFuture;

use crate::http::context::RequestContext;
use crate::http::problem::Problem;
use crate::http::security::{Authenticator, Caller, SharedAuthenticator};
use crate::settings::JwtSettings;

/// Longest bearer token considered at all (a JWT of .NET's is well under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused, or why no verdict could be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    /// Not RS256/ES256 (`none` does not parse and lands in `Malformed`).
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// A required claim is missing or mistyped.
    Claims,
    /// Introspection said `active: false`.
    Inactive,
    /// No keys to judge with: 503.
    CannotJudge {
        retry_after: u64,
    },
    /// .NET could not be asked: 503 (or 502 for an off-contract answer).
    Upstream(UpstreamError),
}

impl Rejection {
    /// The contract's answer.
    pub fn problem(&self) -> Problem {
        match self {
            Rejection::CannotJudge { retry_after } => Problem::upstream_unavailable(
                "no signing keys are available to verify the token",
                *retry_after,
            ),
            Rejection::Upstream(err) => Problem::from_upstream(err),
            Rejection::Expired => Problem::unauthorized("the bearer token has expired"),
            Rejection::Inactive => Problem::unauthorized("the bearer token is not active"),
            _ => Problem::unauthorized("the bearer token is not valid"),
        }
    }
}

pub type Verdict = Result<Caller, Rejection>;

/// The two ways of judging a token.
pub enum Identity {
    Jwt(jwt::JwtVerifier),
    Introspection(Box<introspection::Introspector>),
}

impl Identity {
    /// Local JWT verification when `jwt` is set, else introspection at .NET.
    pub fn new(jwt: Option<&JwtSettings>, bridge: BridgeHandle) -> Self {
        match jwt {
            Some(jwt) => Identity::Jwt(jwt::JwtVerifier::new(
                jwt.issuer.clone(),
                jwt.audience.clone(),
                keys::KeyCache::new(bridge, jwt.jwks_url.clone()),
            )),
            None => Identity::Introspection(Box::new(introspection::Introspector::new(bridge))),
        }
    }

    /// As the request data the bearer scheme looks for.
    pub fn shared(self) -> SharedAuthenticator {
        Arc::new(self)
    }

    pub async fn verify(&self, token: &str, forward: &ForwardHeaders) -> Verdict {
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Rejection::Malformed);
        }
        match self {
            Identity::Jwt(v) => v.verify(token, forward).await,
            Identity::Introspection(v) => v.verify(token, forward).await,
        }
    }
}

impl Authenticator for Identity {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        ctx: Option<&'a RequestContext>,
    ) -> BoxFuture<'a, Result<Caller, Problem>> {
        Box::pin(async move {
            let forward = ctx.map(RequestContext::forward_headers).unwrap_or_default();
            self.verify(token, &forward).await.map_err(|rejection| {
                // The reason only: never the token.
                tracing::info!(reason = ?rejection, "bearer token refused");
                rejection.problem()
            })
        })
    }
}
