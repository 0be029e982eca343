//! Start-up settings of an emulator instance, and the default `/config` document.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// How an emulator starts. `EmulatorConfig::default()` is what the sidecar's tests want:
/// an ephemeral port on 127.0.0.1, the contract's TTLs and the seeded users.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port (see `EmulatorHandle::base_url`).
    pub bind: SocketAddr,
    /// `iss` of the access tokens.
    pub issuer: String,
    /// `aud` of the access tokens.
    pub audience: String,
    /// Access token lifetime (contract: 600 s). Shorter values let a test watch tokens expire.
    pub access_ttl_secs: i64,
    /// Refresh token lifetime (contract: 1,209,600 s), counted from each rotation.
    pub refresh_ttl_secs: i64,
    /// How long an MFA challenge can be answered.
    pub challenge_ttl_secs: i64,
    /// Wrong codes an MFA challenge survives; the next one burns it (`challenge_expired`).
    pub max_otp_failures: u32,
    /// Create the documented users at start-up.
    pub seed_users: bool,
    /// The preference routes demand a valid Bearer for the same user (or an admin), as the
    /// real backend does. Turn off to test the sidecar's forwarding in isolation.
    pub require_auth_for_preferences: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            issuer: DEFAULT_ISSUER.to_string(),
            audience: DEFAULT_AUDIENCE.to_string(),
            access_ttl_secs: 600,
            refresh_ttl_secs: 1_209_600,
            challenge_ttl_secs: 300,
            max_otp_failures: 5,
            seed_users: true,
            require_auth_for_preferences: true,
        }
    }
}

pub const DEFAULT_ISSUER: &str = "https://dotnet.local";
pub const DEFAULT_AUDIENCE: &str = "sidecar";

/// The `/config` document served until a test replaces it. Its `policy.enforced` has the
/// same shape as the preferences (contract 7.2), so the sidecar's overlay has work to do.
pub fn default_remote_config() -> Value {
    json!({
        "policy": {
            "minAppVersion": "1.0.0",
            "maxDevicesPerUser": 5,
            "enforced": {
                "notifications": {
                    "security": { "email": true }
                }
            }
        },
        "featureFlags": {
            "newOnboarding": true,
            "darkMode": false,
            "eventBatching": true
        },
        "notificationDefaults": {
            "email": { "marketing": false, "digest": "weekly" },
            "push": { "enabled": true, "quietHours": { "start": "22:00", "end": "07:00" } },
            "security": { "email": true, "push": true }
        }
    })
}
