//! [`ConfigDocument`]: one good `/config` from .NET, checked against the contract's shape,
//! with its strong ETag computed once.

use serde_json::Value;

use crate::canonical::canonical_sha256_hex;

use super::source::FetchError;

/// The members the contract names; each must be a JSON object. Any other top-level member
/// .NET adds is passed on as it is and is part of the ETag (contract section 12).
pub const REQUIRED_MEMBERS: [&str; 3] = ["policy", "featureFlags", "notificationDefaults"];

/// A config as .NET sent it, known to have the contract's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDocument {
    /// The whole object, passed through to clients unchanged.
    body: Value,
    /// `"` + the first 32 hex characters of SHA-256 over the JCS form of `body` + `"`.
    etag: String,
    /// When it was fetched from .NET (Unix milliseconds, wall clock). A copy loaded from the
    /// durable store keeps the time of its original fetch.
    fetched_at_ms: i64,
}

impl ConfigDocument {
    /// Checks `body` and computes its ETag. `Err(FetchError::Invalid)` when it is not an
    /// object whose `policy`, `featureFlags` and `notificationDefaults` are objects, or when
    /// `policy.enforced` is present and not an object: such a document would silently drop
    /// the server's policy, so the last good config is kept instead.
    pub fn new(body: Value, fetched_at_ms: i64) -> Result<Self, FetchError> {
        let Some(object) = body.as_object() else {
            return Err(FetchError::Invalid(
                "the config is not a JSON object".into(),
            ));
        };
        for member in REQUIRED_MEMBERS {
            if !object.get(member).is_some_and(Value::is_object) {
                return Err(FetchError::Invalid(format!(
                    "the config's `{member}` is missing or not an object"
                )));
            }
        }
        if body
            .pointer("/policy/enforced")
            .is_some_and(|enforced| !enforced.is_object())
        {
            return Err(FetchError::Invalid(
                "the config's `policy.enforced` is not an object".into(),
            ));
        }
        let etag = strong_etag(&body);
        Ok(ConfigDocument {
            body,
            etag,
            fetched_at_ms,
        })
    }

    /// The whole config object, as clients receive it.
    pub fn body(&self) -> &Value {
        &self.body
    }

    /// The strong ETag, quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// When it was fetched from .NET (Unix milliseconds).
    pub fn fetched_at_ms(&self) -> i64 {
        self.fetched_at_ms
    }

    /// `notificationDefaults` (always an object).
    pub fn notification_defaults(&self) -> &Value {
        &self.body["notificationDefaults"]
    }

    /// `policy.enforced`, when the policy enforces anything.
    pub fn enforced(&self) -> Option<&Value> {
        self.body.pointer("/policy/enforced")
    }
}

/// The contract's strong ETag of a config object: the first 32 hex characters of the SHA-256
/// of its RFC 8785 canonical form, in double quotes.
pub fn strong_etag(body: &Value) -> String {
    let hex = canonical_sha256_hex(body);
    format!("\"{}\"", &hex[..32])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "policy": {"enforced": {"notifications": {"security": {"email": true}}}},
            "featureFlags": {"darkMode": false},
            "notificationDefaults": {"email": {"digest": "weekly"}},
        })
    }

    #[test]
    fn etag_is_32_hex_of_the_canonical_hash_quoted() {
        let doc = ConfigDocument::new(valid(), 1).unwrap();
        let hex = canonical_sha256_hex(&valid());
        assert_eq!(doc.etag(), format!("\"{}\"", &hex[..32]));
        assert_eq!(doc.etag().len(), 34);
    }

    #[test]
    fn etag_ignores_member_order_and_number_spelling_but_not_content() {
        let a: Value = serde_json::from_str(
            r#"{"featureFlags":{"x":1.0},"policy":{},"notificationDefaults":{}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"notificationDefaults":{},"policy":{},"featureFlags":{"x":1}}"#,
        )
        .unwrap();
        let c: Value = serde_json::from_str(
            r#"{"notificationDefaults":{},"policy":{},"featureFlags":{"x":2}}"#,
        )
        .unwrap();
        assert_eq!(strong_etag(&a), strong_etag(&b));
        assert_ne!(strong_etag(&a), strong_etag(&c));
    }

    #[test]
    fn extra_top_level_members_pass_and_count_in_the_etag() {
        let mut extended = valid();
        extended["maintenance"] = json!({"window": "sunday"});
        let doc = ConfigDocument::new(extended.clone(), 1).unwrap();
        assert_eq!(doc.body(), &extended);
        assert_ne!(doc.etag(), strong_etag(&valid()));
    }

    #[test]
    fn refuses_what_is_not_the_contract() {
        let mut no_flags = valid();
        no_flags.as_object_mut().unwrap().remove("featureFlags");
        let mut scalar_policy = valid();
        scalar_policy["policy"] = json!(3);
        let mut bad_enforced = valid();
        bad_enforced["policy"]["enforced"] = json!([1]);
        for bad in [json!([]), json!("x"), no_flags, scalar_policy, bad_enforced] {
            assert!(
                matches!(
                    ConfigDocument::new(bad.clone(), 1),
                    Err(FetchError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn accessors() {
        let doc = ConfigDocument::new(valid(), 42).unwrap();
        assert_eq!(doc.fetched_at_ms(), 42);
        assert_eq!(
            doc.notification_defaults(),
            &json!({"email": {"digest": "weekly"}})
        );
        assert_eq!(
            doc.enforced(),
            Some(&json!({"notifications": {"security": {"email": true}}}))
        );
        let mut no_enforced = valid();
        no_enforced["policy"] = json!({});
        assert_eq!(
            ConfigDocument::new(no_enforced, 1).unwrap().enforced(),
            None
        );
    }
}
