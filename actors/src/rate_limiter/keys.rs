//! Bucket names. A bucket is named by its scope and a digest of the scope's value, so that a
//! key's length is bounded whatever a client sends as a `device_id`, and no raw identifier
//! sits in Redis. The same names key the in-memory fallback.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::token_bucket::Scope;

/// Bytes of the SHA-256 digest kept in a key (128 bits: collisions are not a concern).
const DIGEST_BYTES: usize = 16;

/// `<prefix>rl:<scope>:<32 hex digits>`, e.g. `sidecar:rl:user:9f86d081884c7d659a2feaa0c55ad015`.
pub fn bucket_key(prefix: &str, scope: Scope, value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    format!(
        "{prefix}rl:{}:{}",
        scope.as_str(),
        hex::encode(&digest[..DIGEST_BYTES])
    )
}

/// The value an IP bucket is named by: an IPv4 address as it is, an IPv6 address by its
/// /64 prefix (one subscriber line usually holds a whole /64, so per-address buckets would
/// let one client spread itself over 2^64 buckets). IPv4-mapped addresses count as IPv4.
/// No address at all (not a TCP peer) shares one bucket, `unknown`.
pub fn ip_bucket_value(ip: Option<IpAddr>) -> String {
    match ip {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_scoped() {
        let long = "d".repeat(10_000);
        let key = bucket_key("sidecar:", Scope::Device, &long);
        assert!(key.starts_with("sidecar:rl:device:"));
        assert_eq!(key.len(), "sidecar:rl:device:".len() + 32);
        assert_ne!(
            bucket_key("p:", Scope::User, "same"),
            bucket_key("p:", Scope::Device, "same"),
            "scopes never share a bucket"
        );
        assert_eq!(
            bucket_key("p:", Scope::User, "a"),
            bucket_key("p:", Scope::User, "a")
        );
        assert_ne!(
            bucket_key("p:", Scope::User, "a"),
            bucket_key("q:", Scope::User, "a")
        );
    }

    #[test]
    fn ipv6_is_bucketed_by_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_bucket_value(Some(a)), "2001:db8:1:2::/64");
        assert_eq!(ip_bucket_value(Some(a)), ip_bucket_value(Some(b)));
        assert_ne!(ip_bucket_value(Some(a)), ip_bucket_value(Some(c)));
    }

    #[test]
    fn ipv4_and_mapped_ipv4_are_one_bucket() {
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(ip_bucket_value(Some(v4)), "203.0.113.9");
        assert_eq!(ip_bucket_value(Some(mapped)), "203.0.113.9");
        assert_eq!(ip_bucket_value(None), "unknown");
    }
}
