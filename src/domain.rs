//! The contract's closed enumerations (section 1), shared by the auth DTOs and `/meta/enums`.
//! Each enum serialises as exactly the contract's strings, and `ALL` lists them in the
//! contract's order.

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountStatus {
    Active,
    PendingVerification,
    Suspended,
    Banned,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserRole {
    User,
    Moderator,
    Admin,
    SuperAdmin,
}

impl UserRole {
    /// Roles for which the sidecar insists on MFA (contract 3.1).
    pub fn requires_mfa(self) -> bool {
        matches!(self, UserRole::Admin | UserRole::SuperAdmin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
pub enum AgeGroup {
    #[oai(rename = "UNDER_13")]
    #[serde(rename = "UNDER_13")]
    Under13,
    #[oai(rename = "AGE_13_17")]
    #[serde(rename = "AGE_13_17")]
    Age13To17,
    #[oai(rename = "AGE_18_24")]
    #[serde(rename = "AGE_18_24")]
    Age18To24,
    #[oai(rename = "AGE_25_34")]
    #[serde(rename = "AGE_25_34")]
    Age25To34,
    #[oai(rename = "AGE_35_44")]
    #[serde(rename = "AGE_35_44")]
    Age35To44,
    #[oai(rename = "AGE_45_PLUS")]
    #[serde(rename = "AGE_45_PLUS")]
    Age45Plus,
    #[oai(rename = "UNKNOWN")]
    #[serde(rename = "UNKNOWN")]
    Unknown,
}

impl AccountStatus {
    pub const ALL: [AccountStatus; 5] = [
        AccountStatus::Active,
        AccountStatus::PendingVerification,
        AccountStatus::Suspended,
        AccountStatus::Banned,
        AccountStatus::Deleted,
    ];
}

impl UserRole {
    pub const ALL: [UserRole; 4] = [
        UserRole::User,
        UserRole::Moderator,
        UserRole::Admin,
        UserRole::SuperAdmin,
    ];
}

impl AgeGroup {
    pub const ALL: [AgeGroup; 7] = [
        AgeGroup::Under13,
        AgeGroup::Age13To17,
        AgeGroup::Age18To24,
        AgeGroup::Age25To34,
        AgeGroup::Age35To44,
        AgeGroup::Age45Plus,
        AgeGroup::Unknown,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_contracts() {
        let names = |v: serde_json::Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(serde_json::to_value(AccountStatus::ALL).unwrap()),
            [
                "ACTIVE",
                "PENDING_VERIFICATION",
                "SUSPENDED",
                "BANNED",
                "DELETED"
            ]
        );
        assert_eq!(
            names(serde_json::to_value(UserRole::ALL).unwrap()),
            ["USER", "MODERATOR", "ADMIN", "SUPER_ADMIN"]
        );
        assert_eq!(
            names(serde_json::to_value(AgeGroup::ALL).unwrap()),
            [
                "UNDER_13",
                "AGE_13_17",
                "AGE_18_24",
                "AGE_25_34",
                "AGE_35_44",
                "AGE_45_PLUS",
                "UNKNOWN"
            ]
        );
    }
}
