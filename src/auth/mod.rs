//! Auth, proxied to .NET (contract sections 2 and 3): the policy between the HTTP routes
//! (`crate::http::auth`, which only translate) and the bridge.
//!
//! - [`dto`]: the contract's DTOs, which also check .NET's answers.
//! - [`AuthService`]: login with the admin-MFA rule, MFA verify, refresh coalescing, logout.
//!
//! Decisions where the contract is silent (also in the OpenAPI description):
//! - An admin refused for skipping MFA is refused even when the logout at .NET fails (the
//!   tokens are withheld either way); the warn log says whether the logout succeeded.
//! - Refresh requests are coalesced when they carry the same refresh token *and* the same
//!   `device_id`; the in-flight key is a SHA-256 of both, never the token itself.

pub mod dto;

use actors::bridge::{BridgeHandle, ForwardHeaders, Operation, UpstreamRequest};
use actors::metric_names::ADMIN_MFA_REFUSED_TOTAL;
use actors::single_flight::SingleFlight;
use poem::http::StatusCode;
use poem_openapi::types::ParseFromJSON;
use serde_json::json;
use sha2::{Digest, Sha256};

use self::dto::{
    Authenticated, LoginAnswer, LoginRequest, LogoutRequest, MfaVerifyAnswer, MfaVerifyRequest,
    RefreshAnswer, RefreshRequest,
};
use crate::http::problem::{sanitize_detail, Problem};
use crate::http::security::Caller;

/// The auth flows. Cheap to share (`Arc`).
pub struct AuthService {
    bridge: BridgeHandle,
    /// `ENFORCE_ADMIN_MFA`.
    enforce_admin_mfa: bool,
    /// Refreshes in flight, by SHA-256 of (refresh token, device id).
    refreshes: SingleFlight<[u8; 32], Result<RefreshAnswer, Problem>>,
}

impl AuthService {
    pub fn new(bridge: BridgeHandle, enforce_admin_mfa: bool) -> Self {
        Self {
            bridge,
            enforce_admin_mfa,
            refreshes: SingleFlight::new(),
        }
    }

    /// `POST /auth/login`. An `AUTHENTICATED` answer for an ADMIN or SUPER_ADMIN (no MFA
    /// challenge) is refused with 403 `mfa_required_for_admin`, and the session .NET just
    /// opened is logged out with the withheld token (contract 3.1).
    pub async fn login(
        &self,
        req: LoginRequest,
        forward: ForwardHeaders,
    ) -> Result<LoginAnswer, Problem> {
        let body = json!({
            "email": req.email,
            "password": req.password,
            "device_id": req.device_id,
        });
        let answer: LoginAnswer = call_json(
            &self.bridge,
            UpstreamRequest::post(Operation::Login, "/auth/login", body).forward(forward.clone()),
        )
        .await?;
        match &answer {
            LoginAnswer::Authenticated(auth)
                if self.enforce_admin_mfa && auth.user.role.requires_mfa() =>
            {
                self.refuse_admin(auth, forward).await;
                Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "mfa_required_for_admin",
                    "administrators must complete MFA; this login was refused and its session ended",
                ))
            }
            _ => Ok(answer),
        }
    }

    /// Withholds an admin's tokens: logs the session out at .NET (Bearer = the withheld
    /// access token), counts and logs the refusal (never the token).
    async fn refuse_admin(&self, auth: &Authenticated, forward: ForwardHeaders) {
        metrics::counter!(ADMIN_MFA_REFUSED_TOTAL).increment(1);
        let logout = UpstreamRequest::post(
            Operation::Logout,
            "/auth/logout",
            json!({ "session_id": auth.tokens.session_id }),
        )
        .bearer(&auth.tokens.access_token)
        .forward(forward);
        let logout = match self.bridge.call(logout).await {
            Ok(resp) if resp.is_success() => "session logged out at .NET".to_owned(),
            Ok(resp) => format!("the logout at .NET answered {}", resp.status),
            Err(err) => format!("the logout at .NET failed: {err}"),
        };
        tracing::warn!(
            user_id = %auth.user.id.as_str(),
            role = ?auth.user.role,
            session_id = %auth.tokens.session_id.as_str(),
            logout = %logout,
            "admin login without MFA refused: tokens withheld"
        );
    }

    /// `POST /auth/mfa/verify`.
    pub async fn verify_mfa(
        &self,
        req: MfaVerifyRequest,
        forward: ForwardHeaders,
    ) -> Result<MfaVerifyAnswer, Problem> {
        let body = json!({ "challenge_id": req.challenge_id, "otp_code": req.otp_code });
        call_json(
            &self.bridge,
            UpstreamRequest::post(Operation::MfaVerify, "/auth/mfa/verify", body).forward(forward),
        )
        .await
    }

    /// `POST /auth/refresh`, coalesced: identical requests in flight share one call to
    /// .NET and all get its answer (contract 3.3). Nothing is kept afterwards.
    pub async fn refresh(
        &self,
        req: RefreshRequest,
        forward: ForwardHeaders,
    ) -> Result<RefreshAnswer, Problem> {
        let mut hasher = Sha256::new();
        hasher.update(req.refresh_token.as_bytes());
        hasher.update([0u8]);
        hasher.update(req.device_id.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let bridge = self.bridge.clone();
        let body = json!({ "refresh_token": req.refresh_token, "device_id": req.device_id });
        let shared = self
            .refreshes
            .run(key, move || async move {
                call_json(
                    &bridge,
                    UpstreamRequest::post(Operation::Refresh, "/auth/refresh", body)
                        .forward(forward),
                )
                .await
            })
            .await;
        match shared {
            Some(answer) => answer,
            // The flight panicked; it has been logged by the panic hook.
            None => Err(Problem::internal()),
        }
    }

    /// `POST /auth/logout` for the authenticated `caller`, with the caller's token.
    pub async fn logout(
        &self,
        caller: &Caller,
        req: LogoutRequest,
        forward: ForwardHeaders,
    ) -> Result<(), Problem> {
        let call = UpstreamRequest::post(
            Operation::Logout,
            "/auth/logout",
            json!({ "session_id": req.session_id }),
        )
        .bearer(&caller.token)
        .forward(forward);
        let resp = self
            .bridge
            .call(call)
            .await
            .map_err(|err| Problem::from_upstream(&err))?;
        if resp.is_success() {
            Ok(())
        } else {
            Err(Problem::from_upstream_rejection(&resp))
        }
    }
}

/// Calls .NET and reads a 2xx answer as `T`; a 4xx is passed through, anything else that
/// is not the contract is 502, and an unavailable .NET 503.
async fn call_json<T: ParseFromJSON>(
    bridge: &BridgeHandle,
    request: UpstreamRequest,
) -> Result<T, Problem> {
    let operation = request.operation;
    let resp = bridge.call(request).await.map_err(|err| {
        tracing::warn!(%operation, error = %err, "call to .NET failed");
        Problem::from_upstream(&err)
    })?;
    if !resp.is_success() {
        return Err(Problem::from_upstream_rejection(&resp));
    }
    T::parse_from_json(Some(resp.body)).map_err(|err| {
        // The parser may quote a value (a token): only the sanitized reason is logged.
        let reason = sanitize_detail(err.message());
        tracing::warn!(%operation, %reason, "the .NET answer is not the contract");
        Problem::upstream_error(format!("the .NET {operation} answer is not the contract"))
    })
}
