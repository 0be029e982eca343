//! `/auth/*` (contract section 3): login, MFA verify, refresh and logout, proxied to .NET.
//! Handlers translate only; the flows and their policy live in [`crate::auth`].

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use crate::auth::dto::{
    LoginAnswer, LoginRequest, LogoutRequest, MfaVerifyAnswer, MfaVerifyRequest, RefreshAnswer,
    RefreshRequest,
};
use crate::auth::AuthService;
use crate::http::context::RequestContext;
use crate::http::problem::{respond, ProblemResponse};
use crate::http::security::BearerAuth;
use crate::http::ApiTags;

/// Token answers must not be stored by any cache (RFC 6749 §5.1).
const NO_STORE: &str = "no-store";

#[derive(ApiResponse)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum LoginResponse {
    /// `MFA_REQUIRED` with a challenge, or `AUTHENTICATED` with the tokens.
    #[oai(status = 200)]
    Ok(
        Json<LoginAnswer>,
        /// Always `no-store`: the answer may hold tokens.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

#[derive(ApiResponse)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum MfaVerifyResponse {
    /// `AUTHENTICATED` with the tokens.
    #[oai(status = 200)]
    Ok(
        Json<MfaVerifyAnswer>,
        /// Always `no-store`.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

#[derive(ApiResponse)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum RefreshResponse {
    /// The new pair; the refresh token presented is spent.
    #[oai(status = 200)]
    Ok(
        Json<RefreshAnswer>,
        /// Always `no-store`.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

#[derive(ApiResponse)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum LogoutResponse {
    /// .NET revoked the session.
    #[oai(status = 204)]
    NoContent,
}

/// The auth routes.
pub struct AuthApi {
    pub service: Arc<AuthService>,
}

#[OpenApi(prefix_path = "/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Log in with email and password. .NET answers `MFA_REQUIRED` (answer the challenge at
    /// `/auth/mfa/verify`) or `AUTHENTICATED`. An administrator that .NET lets in without
    /// MFA is refused with 403 `mfa_required_for_admin` and that session is ended.
    /// .NET's own refusals (401 `invalid_credentials`, 403 `account_banned`, ...) are passed
    /// through with their status.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        ctx: Data<&Arc<RequestContext>>,
        body: Json<LoginRequest>,
    ) -> Result<LoginResponse, ProblemResponse> {
        match self.service.login(body.0, ctx.forward_headers()).await {
            Ok(answer) => Ok(LoginResponse::Ok(Json(answer), NO_STORE.into())),
            Err(problem) => Err(respond(&ctx, problem)),
        }
    }

    /// Answer an MFA challenge with the 6-digit code. A wrong or expired code is .NET's 401.
    #[oai(path = "/mfa/verify", method = "post", operation_id = "verifyMfa")]
    async fn verify_mfa(
        &self,
        ctx: Data<&Arc<RequestContext>>,
        body: Json<MfaVerifyRequest>,
    ) -> Result<MfaVerifyResponse, ProblemResponse> {
        match self.service.verify_mfa(body.0, ctx.forward_headers()).await {
            Ok(answer) => Ok(MfaVerifyResponse::Ok(Json(answer), NO_STORE.into())),
            Err(problem) => Err(respond(&ctx, problem)),
        }
    }

    /// Exchange a refresh token for a new pair (rotation). Presenting a spent token is a
    /// replay: .NET revokes the whole session and answers 401 `refresh_token_reused`.
    /// Identical requests in flight at the same time share one call to .NET and get the
    /// same answer.
    #[oai(path = "/refresh", method = "post", operation_id = "refresh")]
    async fn refresh(
        &self,
        ctx: Data<&Arc<RequestContext>>,
        body: Json<RefreshRequest>,
    ) -> Result<RefreshResponse, ProblemResponse> {
        match self.service.refresh(body.0, ctx.forward_headers()).await {
            Ok(answer) => Ok(RefreshResponse::Ok(Json(answer), NO_STORE.into())),
            Err(problem) => Err(respond(&ctx, problem)),
        }
    }

    /// End a session at .NET (Bearer required).
    #[oai(path = "/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        ctx: Data<&Arc<RequestContext>>,
        auth: BearerAuth,
        body: Json<LogoutRequest>,
    ) -> Result<LogoutResponse, ProblemResponse> {
        match self
            .service
            .logout(&auth.0, body.0, ctx.forward_headers())
            .await
        {
            Ok(()) => Ok(LogoutResponse::NoContent),
            Err(problem) => Err(respond(&ctx, problem)),
        }
    }
}
