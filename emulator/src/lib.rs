//! # dotnet emulator
//!
//! A faithful stand-in for the .NET backend's side of the sidecar contract
//! (`shared/CONTRACT.md`, sections 2, 3, 7 and 9), with fault injection. The sidecar's
//! integration tests start it in-process; developers run it as the `dotnet-emulator` binary.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use emulator::{Emulator, EmulatorConfig};
//! let dotnet = Emulator::start(EmulatorConfig::default()).await?;
//! let base = dotnet.base_url(); // give this to the sidecar as DOTNET_BASE_URL
//! dotnet.fail_next(2, 503);      // the next two calls answer 503
//! dotnet.refuse_connections().await; // .NET is down
//! dotnet.accept_connections().await?; // and back, on the same port
//! # Ok(()) }
//! ```
//!
//! ## Module map
//! - [`model`]: the contract's enums, users, the seeded users.
//! - [`state`]: the backend's rules (login, MFA, refresh rotation and replay, logout,
//!   introspection, keys, config, preferences) behind one mutex.
//! - [`tokens`]: JWT minting, forging ([`Signing`]) and verification; refresh tokens.
//! - [`keys`]: the compiled-in TEST KEYS (`emulator/keys/`, never for production).
//! - [`totp`]: RFC 6238 codes.
//! - [`faults`]: injected faults and latency, the request recorder.
//! - [`routes`]: the contract routes and the recording/fault wrapper.
//! - [`control`]: the `/__emulator/...` control routes (table in that module).
//! - [`server`]: [`Emulator::start`], [`EmulatorHandle`], refusing/accepting connections.
//!
//! ## Routes (the .NET side)
//! `POST /auth/login`, `POST /auth/mfa/verify`, `POST /auth/refresh`, `POST /auth/logout`,
//! `POST /auth/introspect`, `GET /.well-known/jwks.json`, `GET /config`,
//! `GET|PUT /users/{id}/preferences`. Errors are problem+json with a `code`:
//! `invalid_request` (400), `invalid_credentials`, `invalid_otp`, `challenge_expired`,
//! `invalid_refresh_token`, `refresh_token_reused`, `unauthorized` (401),
//! `account_banned`, `account_suspended`, `forbidden` (403), `not_found` (404).
//!
//! Choices where the contract is silent:
//! - Login checks the password first, then the status: unknown email, wrong password and a
//!   `DELETED` account are all `401 invalid_credentials`; `BANNED` is `403 account_banned`,
//!   `SUSPENDED` is `403 account_suspended`; `PENDING_VERIFICATION` logs in normally (the
//!   `User` DTO shows the status; it is the client's job to nag).
//! - An MFA challenge lives 300 s, is single-use, and burns after 5 wrong codes. Codes of the
//!   previous and next 30 s step are accepted.
//! - A refresh token is single-use and lives 14 days from its own issue (sliding); the whole
//!   family is revoked on replay, and any token of a revoked family is then
//!   `invalid_refresh_token` (a used one stays `refresh_token_reused`). `device_id` is not
//!   bound to the session.
//! - Old access tokens stay valid after a rotation until they expire (as JWTs do); revoking a
//!   session makes all its access tokens inactive on introspection, logout and preferences.
//! - Introspection needs no client credentials here; it checks RS256/ES256 only, one of the
//!   emulator's own keys (published or not), `iss`, `aud`, `exp`/`nbf` with no leeway, and a
//!   live session.
//! - Logout needs a live Bearer; `session_id` of another user is `403 forbidden`, an unknown
//!   one is `204` (idempotent); a missing body is `400`.
//! - The preference routes need a live Bearer of that user or of an admin
//!   ([`EmulatorConfig::require_auth_for_preferences`] turns this off); `PUT` takes any JSON
//!   object and answers `204`.
//!
//! ## Seeded users (password of every one: `correct horse`)
//! | email | role | status | MFA | login answers |
//! | --- | --- | --- | --- | --- |
//! | `alice@example.com` | USER | ACTIVE | no | AUTHENTICATED |
//! | `bob@example.com` | USER | ACTIVE | yes | MFA_REQUIRED |
//! | `admin@example.com` | ADMIN | ACTIVE | yes | MFA_REQUIRED |
//! | `rogue-admin@example.com` | ADMIN | ACTIVE | no | AUTHENTICATED (misconfigured .NET) |
//! | `root@example.com` | SUPER_ADMIN | ACTIVE | yes | MFA_REQUIRED |
//! | `mod@example.com` | MODERATOR | ACTIVE | no | AUTHENTICATED |
//! | `teen@example.com` | USER (AGE_13_17) | ACTIVE | no | AUTHENTICATED |
//! | `kid@example.com` | USER (UNDER_13) | ACTIVE | no | AUTHENTICATED |
//! | `banned@example.com` | USER | BANNED | no | 403 `account_banned` |
//! | `suspended@example.com` | USER | SUSPENDED | no | 403 `account_suspended` |
//! | `pending@example.com` | USER | PENDING_VERIFICATION | no | AUTHENTICATED |
//! | `deleted@example.com` | USER | DELETED | no | 401 `invalid_credentials` |
//!
//! Ids are stable UUIDs derived from the email ([`model::stable_user_id`]); TOTP secrets are
//! derived from the email too ([`model::stable_totp_secret`]).
//!
//! ## Tokens
//! Access tokens: RS256 (kid `test-rsa-1` at start), claims `iss aud sub role sid age_group
//! iat nbf exp jti`, 600 s. The JWKS publishes `test-rsa-1` and `test-ec-1` at start.
//! [`EmulatorHandle::rotate_signing_key`] switches to `test-rsa-2`.

pub mod config;
pub mod control;
pub mod faults;
pub mod keys;
pub mod model;
pub mod problem;
pub mod routes;
pub mod server;
pub mod state;
pub mod tokens;
pub mod totp;

pub use config::{default_remote_config, EmulatorConfig, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
pub use faults::{Fault, Latency, RecordedRequest};
pub use keys::{KID_EC_1, KID_ROGUE, KID_RSA_1, KID_RSA_2};
pub use model::{seeded_users, AccountStatus, AgeGroup, Role, User, UserSpec, DEFAULT_PASSWORD};
pub use server::{Emulator, EmulatorHandle};
pub use state::{Rotation, Session};
pub use tokens::Signing;
