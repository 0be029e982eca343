//! The auth DTOs of contract section 3, exactly as clients send and read them (snake_case).
//!
//! The same types describe the OpenAPI document, check the bounds of what clients send
//! (validators and the checked string types of [`crate::http::text`] run before any
//! handler, so an out-of-bounds field never reaches .NET), and check .NET's answers (parsed with the same types: a missing field, a wrong type
//! or a value outside a closed enumeration is off-contract). None of them derives `Debug`:
//! they hold passwords and tokens.

use poem_openapi::{Object, Union};

use crate::domain::{AccountStatus, AgeGroup, UserRole};
use crate::http::text::{BearerType, Email, OtpCode, Text};

/// `POST /auth/login`.
#[derive(Object)]
pub struct LoginRequest {
    /// 3..254 characters, containing `@`.
    pub email: Email,
    /// 1..1024 characters. Never logged.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub password: Text,
    /// 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub device_id: Text,
}

/// `POST /auth/mfa/verify`.
#[derive(Object)]
pub struct MfaVerifyRequest {
    /// From the `MFA_REQUIRED` login answer; 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub challenge_id: Text,
    /// Exactly 6 ASCII digits. Never logged.
    pub otp_code: OtpCode,
}

/// `POST /auth/refresh`.
#[derive(Object)]
pub struct RefreshRequest {
    /// The refresh token of the last pair; single-use. 1..4096 characters. Never logged.
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub refresh_token: Text,
    /// 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub device_id: Text,
}

/// `POST /auth/logout`.
#[derive(Object)]
pub struct LogoutRequest {
    /// The session to end (`Tokens.session_id`); 1..128 characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub session_id: Text,
}

/// A token pair issued by .NET. The sidecar never mints, alters or stores one.
#[derive(Object, Clone)]
pub struct Tokens {
    /// Bearer access token (10 minutes).
    #[oai(validator(min_length = 1))]
    pub access_token: Text,
    /// Single-use refresh token (14 days); every refresh returns a new one.
    #[oai(validator(min_length = 1))]
    pub refresh_token: Text,
    /// Always `Bearer`.
    pub token_type: BearerType,
    /// Seconds the access token lives (600).
    #[oai(validator(minimum(value = "0")))]
    pub expires_in: i64,
    /// Seconds the refresh token lives (1209600).
    #[oai(validator(minimum(value = "0")))]
    pub refresh_expires_in: i64,
    /// The session (refresh-token family) these tokens belong to.
    #[oai(validator(min_length = 1))]
    pub session_id: Text,
}

/// The user the tokens were issued to.
#[derive(Object, Clone)]
pub struct User {
    pub id: Text,
    pub email: Text,
    pub role: UserRole,
    pub status: AccountStatus,
    pub age_group: AgeGroup,
    pub mfa_enrolled: bool,
}

/// `status: MFA_REQUIRED`: answer the challenge at `POST /auth/mfa/verify`.
#[derive(Object, Clone)]
pub struct MfaChallenge {
    #[oai(validator(min_length = 1))]
    pub challenge_id: Text,
    /// Seconds left to answer it.
    #[oai(validator(minimum(value = "0")))]
    pub challenge_expires_in: i64,
}

/// `status: AUTHENTICATED`: the tokens and who they are for.
#[derive(Object, Clone)]
pub struct Authenticated {
    pub tokens: Tokens,
    pub user: User,
}

/// The login answer, discriminated by `status`.
#[derive(Union, Clone)]
#[oai(discriminator_name = "status")]
pub enum LoginAnswer {
    #[oai(mapping = "MFA_REQUIRED")]
    MfaRequired(MfaChallenge),
    #[oai(mapping = "AUTHENTICATED")]
    Authenticated(Authenticated),
}

/// The MFA verify answer: always `status: AUTHENTICATED`.
#[derive(Union, Clone)]
#[oai(discriminator_name = "status")]
pub enum MfaVerifyAnswer {
    #[oai(mapping = "AUTHENTICATED")]
    Authenticated(Authenticated),
}

/// The refresh answer: the new pair (the one presented is now spent).
#[derive(Object, Clone)]
pub struct RefreshAnswer {
    pub tokens: Tokens,
}
