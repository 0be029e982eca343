//! The domain vocabulary of the contract (section 1) and the emulator's user records.
//!
//! The enumerations serialize to exactly the contract's strings, so a DTO built from them can
//! never drift from the closed sets the sidecar validates against.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `UserRole` (contract section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Moderator,
    Admin,
    SuperAdmin,
}

impl Role {
    /// The wire string, e.g. `SUPER_ADMIN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Moderator => "MODERATOR",
            Role::Admin => "ADMIN",
            Role::SuperAdmin => "SUPER_ADMIN",
        }
    }

    /// Admins may read and write other users' preferences, as the real backend allows.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Admin | Role::SuperAdmin)
    }
}

/// `AccountStatus` (contract section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountStatus {
    Active,
    PendingVerification,
    Suspended,
    Banned,
    Deleted,
}

/// `AgeGroup` (contract section 1). The variants carry explicit names because serde's case
/// conversion would not produce `AGE_13_17`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgeGroup {
    #[serde(rename = "UNDER_13")]
    Under13,
    #[serde(rename = "AGE_13_17")]
    Age13To17,
    #[serde(rename = "AGE_18_24")]
    Age18To24,
    #[serde(rename = "AGE_25_34")]
    Age25To34,
    #[serde(rename = "AGE_35_44")]
    Age35To44,
    #[serde(rename = "AGE_45_PLUS")]
    Age45Plus,
    #[serde(rename = "UNKNOWN")]
    Unknown,
}

impl AgeGroup {
    /// The wire string, e.g. `AGE_25_34`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgeGroup::Under13 => "UNDER_13",
            AgeGroup::Age13To17 => "AGE_13_17",
            AgeGroup::Age18To24 => "AGE_18_24",
            AgeGroup::Age25To34 => "AGE_25_34",
            AgeGroup::Age35To44 => "AGE_35_44",
            AgeGroup::Age45Plus => "AGE_45_PLUS",
            AgeGroup::Unknown => "UNKNOWN",
        }
    }
}

/// What a test (or the control route `POST /__emulator/users`) gives to create a user.
/// Only `email` is required when deserializing; the rest default to an ordinary active user
/// with the password [`DEFAULT_PASSWORD`] and no MFA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UserSpec {
    /// Left empty, a stable id is derived from the email (see [`stable_user_id`]).
    pub id: Option<String>,
    pub email: String,
    pub password: String,
    pub role: Role,
    pub status: AccountStatus,
    pub age_group: AgeGroup,
    pub mfa_enrolled: bool,
    /// Raw TOTP secret bytes; left empty, one is derived from the email (see [`stable_totp_secret`]).
    pub totp_secret: Option<Vec<u8>>,
}

impl Default for UserSpec {
    fn default() -> Self {
        UserSpec {
            id: None,
            email: String::new(),
            password: DEFAULT_PASSWORD.to_string(),
            role: Role::User,
            status: AccountStatus::Active,
            age_group: AgeGroup::Age25To34,
            mfa_enrolled: false,
            totp_secret: None,
        }
    }
}

impl UserSpec {
    /// An active `USER` with the default password and no MFA.
    pub fn new(email: impl Into<String>) -> Self {
        UserSpec {
            email: email.into(),
            ..UserSpec::default()
        }
    }

    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = password.into();
        self
    }

    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub fn status(mut self, status: AccountStatus) -> Self {
        self.status = status;
        self
    }

    pub fn age_group(mut self, age_group: AgeGroup) -> Self {
        self.age_group = age_group;
        self
    }

    pub fn mfa(mut self, enrolled: bool) -> Self {
        self.mfa_enrolled = enrolled;
        self
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// The password of every seeded user.
pub const DEFAULT_PASSWORD: &str = "correct horse";

/// A stored user. Emails are compared case-insensitively (they are keyed lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password: String,
    pub role: Role,
    pub status: AccountStatus,
    pub age_group: AgeGroup,
    pub mfa_enrolled: bool,
    pub totp_secret: Vec<u8>,
}

impl User {
    pub fn from_spec(spec: UserSpec) -> User {
        let email = spec.email.trim().to_ascii_lowercase();
        User {
            id: spec.id.unwrap_or_else(|| stable_user_id(&email)),
            totp_secret: spec
                .totp_secret
                .unwrap_or_else(|| stable_totp_secret(&email)),
            email,
            password: spec.password,
            role: spec.role,
            status: spec.status,
            age_group: spec.age_group,
            mfa_enrolled: spec.mfa_enrolled,
        }
    }

    /// The contract's `User` DTO.
    pub fn dto(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "email": self.email,
            "role": self.role,
            "status": self.status,
            "age_group": self.age_group,
            "mfa_enrolled": self.mfa_enrolled,
        })
    }
}

/// A UUID-shaped id derived from the email, so the seeded users keep the same ids across runs
/// and tests can name them without asking the emulator first.
pub fn stable_user_id(email: &str) -> String {
    let digest = Sha256::digest(format!(
        "sidecar-emulator-user:{}",
        email.to_ascii_lowercase()
    ));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A 20-byte TOTP secret (the RFC 4226 recommended length) derived from the email: stable
/// across runs so a developer can compute codes outside the emulator, and still per user.
pub fn stable_totp_secret(email: &str) -> Vec<u8> {
    let digest = Sha256::digest(format!(
        "sidecar-emulator-totp:{}",
        email.to_ascii_lowercase()
    ));
    digest[..20].to_vec()
}

/// The users present at start-up (unless `EmulatorConfig::seed_users` is false).
/// Every one has the password [`DEFAULT_PASSWORD`].
pub fn seeded_users() -> Vec<UserSpec> {
    vec![
        UserSpec::new("alice@example.com").age_group(AgeGroup::Age25To34),
        UserSpec::new("bob@example.com")
            .mfa(true)
            .age_group(AgeGroup::Age18To24),
        UserSpec::new("admin@example.com")
            .role(Role::Admin)
            .mfa(true)
            .age_group(AgeGroup::Age35To44),
        // A misconfigured .NET: an admin without MFA gets tokens straight away. The sidecar
        // must refuse to release them (contract 3.1).
        UserSpec::new("rogue-admin@example.com")
            .role(Role::Admin)
            .age_group(AgeGroup::Age35To44),
        UserSpec::new("root@example.com")
            .role(Role::SuperAdmin)
            .mfa(true)
            .age_group(AgeGroup::Age45Plus),
        UserSpec::new("mod@example.com")
            .role(Role::Moderator)
            .age_group(AgeGroup::Age25To34),
        UserSpec::new("teen@example.com").age_group(AgeGroup::Age13To17),
        UserSpec::new("kid@example.com").age_group(AgeGroup::Under13),
        UserSpec::new("banned@example.com").status(AccountStatus::Banned),
        UserSpec::new("suspended@example.com").status(AccountStatus::Suspended),
        UserSpec::new("pending@example.com")
            .status(AccountStatus::PendingVerification)
            .age_group(AgeGroup::Unknown),
        UserSpec::new("deleted@example.com").status(AccountStatus::Deleted),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_the_contract_strings() {
        assert_eq!(
            serde_json::to_value(Role::SuperAdmin).unwrap(),
            "SUPER_ADMIN"
        );
        assert_eq!(
            serde_json::to_value(AccountStatus::PendingVerification).unwrap(),
            "PENDING_VERIFICATION"
        );
        for g in [
            AgeGroup::Under13,
            AgeGroup::Age13To17,
            AgeGroup::Age18To24,
            AgeGroup::Age25To34,
            AgeGroup::Age35To44,
            AgeGroup::Age45Plus,
            AgeGroup::Unknown,
        ] {
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
    }

    #[test]
    fn stable_ids_are_uuids_and_stable() {
        let a = stable_user_id("Alice@Example.com");
        assert_eq!(a, stable_user_id("alice@example.com"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
