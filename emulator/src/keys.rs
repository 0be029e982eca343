//! The emulator's signing keys: TEST KEYS, NEVER FOR PRODUCTION (see `keys/README.md`).
//!
//! The PEM files and their precomputed public JWKs are compiled in (`include_str!`), so the
//! library works from any working directory and a test never depends on file paths.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::Value;

/// Kid of the RS256 key that signs at start-up.
pub const KID_RSA_1: &str = "test-rsa-1";
/// Kid of the RS256 key `rotate_signing_key` switches to.
pub const KID_RSA_2: &str = "test-rsa-2";
/// Kid of the ES256 (P-256) key.
pub const KID_EC_1: &str = "test-ec-1";
/// Kid of a key that is never published and never trusted: an attacker's key.
pub const KID_ROGUE: &str = "test-rsa-rogue";

const PUBLIC_JWKS: &str = include_str!("../keys/public-jwks.json");

/// `(kid, private PEM, public PEM, trusted)`. "Trusted" keys are the ones the emulator itself
/// accepts on introspection and logout (its own key ring, published or not).
const KEY_FILES: [(&str, &str, &str, bool); 4] = [
    (
        KID_RSA_1,
        include_str!("../keys/test-rsa-1.key.pem"),
        include_str!("../keys/test-rsa-1.pub.pem"),
        true,
    ),
    (
        KID_RSA_2,
        include_str!("../keys/test-rsa-2.key.pem"),
        include_str!("../keys/test-rsa-2.pub.pem"),
        true,
    ),
    (
        KID_EC_1,
        include_str!("../keys/test-ec-1.key.pem"),
        include_str!("../keys/test-ec-1.pub.pem"),
        true,
    ),
    (
        KID_ROGUE,
        include_str!("../keys/test-rsa-rogue.key.pem"),
        include_str!("../keys/test-rsa-rogue.pub.pem"),
        false,
    ),
];

/// One key pair.
pub struct TestKey {
    pub kid: &'static str,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public key in PEM form: the "secret" of an HS256 algorithm-confusion forgery.
    pub public_pem: &'static str,
    /// The public JWK as published in the JWKS.
    pub jwk: Value,
    pub trusted: bool,
}

/// All keys, by kid. Immutable after start-up; which one signs and which are published is
/// mutable state kept elsewhere.
pub struct KeyRing {
    keys: BTreeMap<&'static str, TestKey>,
}

impl KeyRing {
    pub fn load() -> anyhow::Result<KeyRing> {
        let jwks: Value = serde_json::from_str(PUBLIC_JWKS).context("keys/public-jwks.json")?;
        let jwks = jwks["keys"]
            .as_array()
            .ok_or_else(|| anyhow!("keys/public-jwks.json has no keys array"))?;
        let mut keys = BTreeMap::new();
        for (kid, private_pem, public_pem, trusted) in KEY_FILES {
            let jwk = jwks
                .iter()
                .find(|k| k["kid"] == kid)
                .cloned()
                .ok_or_else(|| anyhow!("no public JWK for {kid}"))?;
            let (alg, encoding, decoding) = match jwk["kty"].as_str() {
                Some("RSA") => (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_pem(private_pem.as_bytes())?,
                    DecodingKey::from_rsa_pem(public_pem.as_bytes())?,
                ),
                Some("EC") => (
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(private_pem.as_bytes())?,
                    DecodingKey::from_ec_pem(public_pem.as_bytes())?,
                ),
                other => return Err(anyhow!("unsupported kty {other:?} for {kid}")),
            };
            keys.insert(
                kid,
                TestKey {
                    kid,
                    alg,
                    encoding,
                    decoding,
                    public_pem,
                    jwk,
                    trusted,
                },
            );
        }
        Ok(KeyRing { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&TestKey> {
        self.keys.get(kid)
    }

    pub fn kids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.keys.keys().copied()
    }
}
