//! RFC 6238 TOTP (HMAC-SHA1, 30 s step, 6 digits), what an authenticator app computes.
//!
//! Verification accepts the previous, current and next step (±30 s of clock skew), as ASP.NET
//! Identity's authenticator token provider does, so a code read just before a step boundary
//! still works.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Seconds per TOTP step.
pub const STEP_SECONDS: i64 = 30;
/// Steps either side of the current one that verification accepts.
pub const SKEW_STEPS: i64 = 1;

/// RFC 4226 HOTP value for `counter`, truncated to `digits` decimal digits.
fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    // Dynamic truncation (RFC 4226 section 5.3).
    let offset = (digest[digest.len() - 1] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    let code = binary % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

fn step_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(STEP_SECONDS)
}

/// The 6-digit code for the step containing `unix_seconds`.
pub fn code_at(secret: &[u8], unix_seconds: i64) -> String {
    hotp(secret, step_of(unix_seconds).max(0) as u64, 6)
}

/// Whether `code` is valid at `unix_seconds`, within the accepted skew.
pub fn verify(secret: &[u8], code: &str, unix_seconds: i64) -> bool {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let step = step_of(unix_seconds);
    (step - SKEW_STEPS..=step + SKEW_STEPS)
        .filter(|s| *s >= 0)
        .any(|s| constant_time_eq(hotp(secret, s as u64, 6).as_bytes(), code.as_bytes()))
}

/// A well-formed code that `verify` rejects at `unix_seconds` (for wrong-code tests: a code
/// merely "different from the current one" could collide with a neighbouring step's).
pub fn wrong_code_at(secret: &[u8], unix_seconds: i64) -> String {
    let current: u32 = code_at(secret, unix_seconds).parse().expect("digits");
    (1..)
        .map(|d| format!("{:06}", (current + d) % 1_000_000))
        .find(|candidate| !verify(secret, candidate, unix_seconds))
        .expect("at most three codes are accepted")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column, secret "12345678901234567890".
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        let vectors = [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
        ];
        for (t, expected) in vectors {
            assert_eq!(hotp(secret, (t / 30) as u64, 8), expected, "t={t}");
            assert_eq!(code_at(secret, t), expected[2..], "t={t}");
        }
    }

    #[test]
    fn verify_accepts_skew_and_rejects_others() {
        let secret = b"abcdefghijklmnopqrst";
        let t = 1_700_000_000;
        assert!(verify(secret, &code_at(secret, t), t));
        assert!(verify(secret, &code_at(secret, t - 30), t));
        assert!(verify(secret, &code_at(secret, t + 30), t));
        assert!(!verify(secret, &code_at(secret, t - 90), t));
        assert!(!verify(secret, &wrong_code_at(secret, t), t));
        assert!(!verify(secret, "12345", t));
        assert!(!verify(secret, "abcdef", t));
    }
}
