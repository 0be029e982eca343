//! Property tests of the request bounds that are checked before anything reaches .NET:
//! the auth DTOs of contract section 3 (poem-openapi validators, run by
//! `ParseFromJSON`, so a body that fails here is 400 `invalid_request` without a call),
//! and the `X-Request-Id` and `traceparent` headers of section 1.
//!
//! Lengths are in characters (Unicode scalar values), as the validators count them; the
//! generators aim at both sides of every bound and mix in multi-byte characters so that a
//! byte count would be caught.

use poem_openapi::types::ParseFromJSON;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};
use sidecar::auth::dto::{LoginRequest, LogoutRequest, MfaVerifyRequest, RefreshRequest};
use sidecar::http::context::{valid_request_id, TraceContext};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A character: ASCII mostly, `@` often, some of 2, 3 and 4 UTF-8 bytes, anything.
fn arb_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::char::range('a', 'z'),
        1 => Just('@'),
        1 => Just('é'),
        1 => Just('€'),
        1 => Just('😀'),
        1 => any::<char>(),
    ]
}

/// A string of `len` characters, `len` often at or next to one of `bounds`, else up to
/// `max`.
fn arb_text(bounds: &'static [usize], max: usize) -> impl Strategy<Value = String> {
    let near: Vec<usize> = bounds
        .iter()
        .flat_map(|&b| [b.saturating_sub(1), b, b + 1])
        .collect();
    // A random run of characters repeated to the length: long strings stay cheap.
    (
        prop_oneof![select(near), 0..=max],
        prop::collection::vec(arb_char(), 1..=24),
    )
        .prop_map(|(len, run)| run.into_iter().cycle().take(len).collect())
}

/// A field as sent: a string, missing, or some other JSON type.
#[derive(Debug, Clone)]
enum Field {
    Text(String),
    Missing,
    Other(Value),
}

fn arb_field(text: impl Strategy<Value = String>) -> impl Strategy<Value = Field> {
    prop_oneof![
        12 => text.prop_map(Field::Text),
        1 => Just(Field::Missing),
        1 => arb_json()
            .prop_filter("not a string", |v| !v.is_string())
            .prop_map(Field::Other),
    ]
}

fn chars_within(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.chars().count())
}

/// A field's name, its value, and the bound a string there must keep.
type Checked<'a> = (&'a str, &'a Field, &'a dyn Fn(&str) -> bool);

/// The body, and whether every field is a string within its bound.
fn body(fields: &[Checked<'_>], extras: &[(String, Value)]) -> (Value, bool) {
    let mut m = Map::new();
    for (k, v) in extras {
        m.insert(k.clone(), v.clone());
    }
    let mut valid = true;
    for (name, field, ok) in fields {
        match field {
            Field::Text(s) => {
                valid &= ok(s);
                m.insert((*name).to_owned(), Value::String(s.clone()));
            }
            Field::Missing => {
                valid = false;
                m.remove(*name);
            }
            Field::Other(v) => {
                valid = false;
                m.insert((*name).to_owned(), v.clone());
            }
        }
    }
    (Value::Object(m), valid)
}

/// Unknown members (they are ignored).
fn arb_extras(known: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("user_id".to_owned()),
                Just("role".to_owned()),
                Just("Email".to_owned()),
                Just("deviceId".to_owned()),
                "[a-z_]{1,12}",
            ]
            .prop_filter("unknown", move |k| !known.contains(&k.as_str())),
            arb_json(),
        ),
        0..3,
    )
}

fn text_of(field: &Field) -> &str {
    match field {
        Field::Text(s) => s,
        _ => unreachable!("only a valid body parses"),
    }
}

const LOGIN: &[&str] = &["email", "password", "device_id"];
const MFA: &[&str] = &["challenge_id", "otp_code"];
const REFRESH: &[&str] = &["refresh_token", "device_id"];
const LOGOUT: &[&str] = &["session_id"];

fn email_ok(s: &str) -> bool {
    chars_within(s, 3, 254) && s.contains('@')
}

fn password_ok(s: &str) -> bool {
    chars_within(s, 1, 1024)
}

fn id_ok(s: &str) -> bool {
    chars_within(s, 1, 128)
}

fn token_ok(s: &str) -> bool {
    chars_within(s, 1, 4096)
}

/// Exactly six ASCII digits.
fn otp_ok(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

fn arb_otp() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{6}",
        "[0-9]{0,8}",
        "[0-9]{6}\n",
        " [0-9]{6}",
        "[0-9]{3}[a-zA-Z +\\-][0-9]{2}",
        // Digits that are not ASCII: Arabic-Indic, fullwidth.
        "[\u{0660}-\u{0669}]{6}",
        "[\u{FF10}-\u{FF19}]{6}",
        "\\PC{0,8}",
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// `POST /auth/login`: email 3..254 characters with an `@`, password 1..1024,
    /// device_id 1..128, all strings; anything else is refused, unknown members are
    /// ignored, and what parses is what was sent.
    #[test]
    fn login_bounds(
        email in arb_field(prop_oneof![
            arb_text(&[3, 254], 300),
            arb_text(&[3, 254], 300).prop_map(|s| s.replace('@', "a")),
        ]),
        password in arb_field(arb_text(&[1, 1024], 1100)),
        device_id in arb_field(arb_text(&[1, 128], 160)),
        extras in arb_extras(LOGIN),
    ) {
        let (v, valid) = body(
            &[("email", &email, &email_ok), ("password", &password, &password_ok),
              ("device_id", &device_id, &id_ok)],
            &extras,
        );
        match LoginRequest::parse_from_json(Some(v)) {
            Ok(r) => {
                prop_assert!(valid, "accepted out of bounds");
                prop_assert_eq!(r.email.as_str(), text_of(&email));
                prop_assert_eq!(r.password.as_str(), text_of(&password));
                prop_assert_eq!(r.device_id.as_str(), text_of(&device_id));
            }
            Err(_) => prop_assert!(!valid, "refused within bounds"),
        }
    }

    /// `POST /auth/mfa/verify`: challenge_id 1..128, otp_code exactly 6 ASCII digits.
    #[test]
    fn mfa_verify_bounds(
        challenge_id in arb_field(arb_text(&[1, 128], 160)),
        otp_code in arb_field(arb_otp()),
        extras in arb_extras(MFA),
    ) {
        let (v, valid) = body(
            &[("challenge_id", &challenge_id, &id_ok), ("otp_code", &otp_code, &otp_ok)],
            &extras,
        );
        match MfaVerifyRequest::parse_from_json(Some(v)) {
            Ok(r) => {
                prop_assert!(valid, "accepted out of bounds");
                prop_assert_eq!(r.challenge_id.as_str(), text_of(&challenge_id));
                prop_assert_eq!(r.otp_code.as_str(), text_of(&otp_code));
            }
            Err(_) => prop_assert!(!valid, "refused within bounds"),
        }
    }

    /// `POST /auth/refresh`: refresh_token 1..4096, device_id 1..128.
    #[test]
    fn refresh_bounds(
        refresh_token in arb_field(arb_text(&[1, 4096], 4200)),
        device_id in arb_field(arb_text(&[1, 128], 160)),
        extras in arb_extras(REFRESH),
    ) {
        let (v, valid) = body(
            &[("refresh_token", &refresh_token, &token_ok), ("device_id", &device_id, &id_ok)],
            &extras,
        );
        match RefreshRequest::parse_from_json(Some(v)) {
            Ok(r) => {
                prop_assert!(valid, "accepted out of bounds");
                prop_assert_eq!(r.refresh_token.as_str(), text_of(&refresh_token));
                prop_assert_eq!(r.device_id.as_str(), text_of(&device_id));
            }
            Err(_) => prop_assert!(!valid, "refused within bounds"),
        }
    }

    /// `POST /auth/logout`: session_id 1..128.
    #[test]
    fn logout_bounds(
        session_id in arb_field(arb_text(&[1, 128], 160)),
        extras in arb_extras(LOGOUT),
    ) {
        let (v, valid) = body(&[("session_id", &session_id, &id_ok)], &extras);
        match LogoutRequest::parse_from_json(Some(v)) {
            Ok(r) => {
                prop_assert!(valid, "accepted out of bounds");
                prop_assert_eq!(r.session_id.as_str(), text_of(&session_id));
            }
            Err(_) => prop_assert!(!valid, "refused within bounds"),
        }
    }

    /// Any JSON never panics, and what is not an object is refused.
    #[test]
    fn arbitrary_auth_bodies(v in arb_json()) {
        let object = v.is_object();
        let results = [
            LoginRequest::parse_from_json(Some(v.clone())).is_ok(),
            MfaVerifyRequest::parse_from_json(Some(v.clone())).is_ok(),
            RefreshRequest::parse_from_json(Some(v.clone())).is_ok(),
            LogoutRequest::parse_from_json(Some(v)).is_ok(),
        ];
        if !object {
            prop_assert_eq!(results, [false; 4]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Section 1 headers

proptest! {
    #![proptest_config(config(512))]

    /// `X-Request-Id` is kept iff it is 1..128 characters of `[A-Za-z0-9._-]`.
    #[test]
    fn request_id_bounds(s in prop_oneof![
        "[A-Za-z0-9._-]{0,130}",
        "[A-Za-z0-9._-]{127,129}",
        "[A-Za-z0-9._-]{0,20}[^A-Za-z0-9._-][A-Za-z0-9._-]{0,20}",
        "\\PC{0,20}",
    ]) {
        let want = (1..=128).contains(&s.chars().count())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        prop_assert_eq!(valid_request_id(&s), want);
    }

    /// A version-00 `traceparent` with lowercase hex ids that are not all zero is continued
    /// as sent; changing any part into an invalid form drops it; nothing panics.
    #[test]
    fn traceparent(
        trace_id in "[0-9a-f]{32}",
        parent_id in "[0-9a-f]{16}",
        flags in "[0-9a-f]{2}",
        breakage in prop_oneof![
            Just(None),
            (0usize..55, "[g-zA-Z_ ]").prop_map(Some),
        ],
        noise in "\\PC{0,60}",
    ) {
        let header = format!("00-{trace_id}-{parent_id}-{flags}");
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        match breakage {
            None => {
                let parsed = TraceContext::parse(&header);
                if nonzero(&trace_id) && nonzero(&parent_id) {
                    let parsed = parsed.expect("a valid traceparent");
                    prop_assert_eq!(parsed.trace_id, trace_id);
                    prop_assert_eq!(parsed.parent_id, parent_id);
                    prop_assert_eq!(format!("{:02x}", parsed.flags), flags);
                } else {
                    prop_assert!(parsed.is_none());
                }
                // Version 00 has exactly four fields.
                let longer = format!("{header}-00");
                prop_assert!(TraceContext::parse(&longer).is_none());
            }
            Some((at, c)) => {
                let mut broken = header.clone();
                broken.replace_range(at..=at, &c);
                prop_assert!(TraceContext::parse(&broken).is_none(), "{}", broken);
            }
        }
        let _ = TraceContext::parse(&noise);
    }
}
