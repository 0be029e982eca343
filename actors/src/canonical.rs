//! RFC 8785 (JSON Canonicalization Scheme, "JCS") and the contract's `eventHash`.
//!
//! Two parties that hash "the same" JSON must agree on its bytes, whatever key order,
//! whitespace or number spelling the client used. JCS fixes all three: object members are
//! sorted by their names' UTF-16 code units, strings use the minimal escapes of ECMAScript's
//! `JSON.stringify`, and every number is an IEEE-754 double printed the way ECMAScript's
//! `Number.prototype.toString` prints it. The contract (section 5.3) hashes the JCS form of
//! `{"eventType", "payload", "timeBucket", "user_id"}`; the config `ETag` (section 7.1) is
//! also taken over a JCS form.
//!
//! The writer is generic over a private `Sink` trait so that the hot path ([`event_hash`],
//! run for every submitted event) streams the canonical bytes straight into SHA-256 without
//! building an intermediate `Value` or `String`.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Where canonical bytes go: a `String` for callers that want the text, a hasher for
/// callers that only want its digest.
trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }
}

/// The RFC 8785 canonical form of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// Appends the RFC 8785 canonical form of `value` to `out` (reuse `out` to avoid
/// allocating per call).
pub fn write_canonical(value: &Value, out: &mut String) {
    write_value(value, out);
}

/// Lowercase hex SHA-256 of the canonical form of `value`, streamed into the hasher.
pub fn canonical_sha256_hex(value: &Value) -> String {
    let mut hasher = Sha256::new();
    write_value(value, &mut hasher);
    hex::encode(hasher.finalize())
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `unix_seconds` floored to a multiple of `bucket_seconds`.
///
/// Flooring uses Euclidean division, so a time before 1970 goes to the bucket that starts
/// at or before it (-1 s with 60 s buckets is -60, not 0). A non-positive `bucket_seconds`
/// means "no bucketing" and returns `unix_seconds` unchanged; a bucket start that would lie
/// below `i64::MIN` saturates to `i64::MIN`. Neither can come from a validated
/// configuration, but this function never panics.
pub fn time_bucket(unix_seconds: i64, bucket_seconds: i64) -> i64 {
    if bucket_seconds <= 0 {
        return unix_seconds;
    }
    unix_seconds
        .div_euclid(bucket_seconds)
        .checked_mul(bucket_seconds)
        .unwrap_or(i64::MIN)
}

/// The contract's `eventHash` (section 5.3): lowercase hex SHA-256 of the canonical JSON of
/// `{"eventType", "payload", "timeBucket", "user_id"}`, where `timeBucket` is `occurred_at`
/// in Unix seconds floored to a multiple of `bucket_seconds`.
///
/// The sub-second part of `occurred_at` is dropped (floored) before bucketing, and the
/// offset it was written with does not matter: only the instant does.
pub fn event_hash(
    event_type: &str,
    payload: &Value,
    occurred_at: DateTime<FixedOffset>,
    user_id: &str,
    bucket_seconds: i64,
) -> String {
    let mut hasher = Sha256::new();
    write_event_envelope(
        event_type,
        payload,
        occurred_at,
        user_id,
        bucket_seconds,
        &mut hasher,
    );
    hex::encode(hasher.finalize())
}

/// The canonical text [`event_hash`] hashes; for tests, debugging and other implementations
/// that want to compare bytes rather than digests.
pub fn event_hash_input(
    event_type: &str,
    payload: &Value,
    occurred_at: DateTime<FixedOffset>,
    user_id: &str,
    bucket_seconds: i64,
) -> String {
    let mut out = String::new();
    write_event_envelope(
        event_type,
        payload,
        occurred_at,
        user_id,
        bucket_seconds,
        &mut out,
    );
    out
}

/// Writes the hashed envelope without building it as a `Value`. Its four member names are
/// already in UTF-16 order (`e` < `p` < `t` < `u`), so they are written as literals.
fn write_event_envelope<S: Sink>(
    event_type: &str,
    payload: &Value,
    occurred_at: DateTime<FixedOffset>,
    user_id: &str,
    bucket_seconds: i64,
    out: &mut S,
) {
    let bucket = time_bucket(occurred_at.timestamp(), bucket_seconds);
    out.put("{\"eventType\":");
    write_string(event_type, out);
    out.put(",\"payload\":");
    write_value(payload, out);
    out.put(",\"timeBucket\":");
    write_f64(bucket as f64, out);
    out.put(",\"user_id\":");
    write_string(user_id, out);
    out.put("}");
}

/// Recursion depth is bounded by the input's nesting, which serde_json's parser already
/// caps (128 levels) for anything that came off the wire.
fn write_value<S: Sink>(value: &Value, out: &mut S) {
    match value {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => write_array(items, out),
        Value::Object(map) => write_object(map, out),
    }
}

fn write_array<S: Sink>(items: &[Value], out: &mut S) {
    out.put("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put(",");
        }
        write_value(item, out);
    }
    out.put("]");
}

fn write_object<S: Sink>(map: &Map<String, Value>, out: &mut S) {
    // serde_json's default map iterates in byte (= code point) order, which equals UTF-16
    // order unless a key mixes supplementary-plane characters with U+E000..U+FFFF. Check
    // first, so the common case neither allocates nor sorts.
    let in_order = map
        .keys()
        .is_sorted_by(|a, b| utf16_cmp(a, b) != Ordering::Greater);
    if in_order {
        write_members(map.iter(), out);
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
        write_members(members.into_iter(), out);
    }
}

fn write_members<'a, S: Sink>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut S) {
    out.put("{");
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.put(",");
        }
        write_string(key, out);
        out.put(":");
        write_value(value, out);
    }
    out.put("}");
}

/// Compares two strings by their UTF-16 code units, as RFC 8785 section 3.2.3 requires.
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Writes `s` as a JSON string with exactly the escapes of RFC 8785 section 3.2.2.2:
/// the two mandatory ones, the five short control escapes, `\u00xx` (lowercase) for other
/// control characters, and every other character as literal UTF-8.
fn write_string<S: Sink>(s: &str, out: &mut S) {
    out.put("\"");
    let mut run_start = 0;
    for (i, byte) in s.bytes().enumerate() {
        // Multi-byte UTF-8 sequences never contain bytes below 0x80, so testing bytes is
        // safe and `i` is always a char boundary when we split here.
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.put(&s[run_start..i]);
        if escape.is_empty() {
            write_unicode_escape(byte, out);
        } else {
            out.put(escape);
        }
        run_start = i + 1;
    }
    out.put(&s[run_start..]);
    out.put("\"");
}

/// Writes a control character below 0x20 as `\u00xx` with lowercase hex digits.
fn write_unicode_escape<S: Sink>(byte: u8, out: &mut S) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let buf = [
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 0x0f)],
    ];
    // All six bytes are ASCII, so this cannot fail.
    out.put(std::str::from_utf8(&buf).unwrap_or_default());
}

/// JCS numbers are IEEE doubles printed as ECMAScript does. Every integer goes through the
/// double it converts to: up to 2^53 that conversion is exact and ECMAScript prints the plain
/// digits; beyond it the integer rounds (to nearest, ties to even, as `JSON.parse` would) and
/// prints as that double, so 2^64-1 prints `18446744073709552000`.
fn write_number<S: Sink>(n: &Number, out: &mut S) {
    if let Some(u) = n.as_u64() {
        write_f64(u as f64, out);
    } else if let Some(i) = n.as_i64() {
        write_f64(i as f64, out);
    } else if let Some(f) = n.as_f64() {
        write_f64(f, out);
    } else {
        // Unreachable with serde_json's default features (every Number is u64, i64 or a
        // finite f64); kept so that a feature change can never make this panic.
        out.put(&n.to_string());
    }
}

/// ryu-js implements ECMAScript's Number-to-String, which JCS adopts verbatim (including
/// `-0` printing as `0`). Non-finite values are not JSON and cannot reach here from a
/// `serde_json::Value`; should one ever arrive it is written as `null`, like
/// `JSON.stringify` does, rather than panicking.
fn write_f64<S: Sink>(f: f64, out: &mut S) {
    if f.is_finite() {
        let mut buf = ryu_js::Buffer::new();
        out.put(buf.format_finite(f));
    } else {
        out.put("null");
    }
}

#[cfg(test)]
// The RFC's examples spell some doubles with more digits than they hold; that is the point.
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Vendored copy of `shared/vectors/event_hash.json` (the contract's test vectors).
    const VECTORS: &str = include_str!("../tests/data/event_hash.json");

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("test JSON parses")
    }

    #[test]
    fn reproduces_every_contract_vector() {
        let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("vectors parse");
        assert!(
            vectors.len() >= 10,
            "expected the contract's vectors, got {}",
            vectors.len()
        );
        for v in &vectors {
            let name = v["name"].as_str().expect("name");
            let occurred_at =
                DateTime::parse_from_rfc3339(v["occurredAt"].as_str().expect("occurredAt"))
                    .expect("occurredAt is RFC 3339");
            let args = (
                v["eventType"].as_str().expect("eventType"),
                &v["payload"],
                occurred_at,
                v["user_id"].as_str().expect("user_id"),
                v["bucketSeconds"].as_i64().expect("bucketSeconds"),
            );
            let canonical = event_hash_input(args.0, args.1, args.2, args.3, args.4);
            assert_eq!(
                canonical,
                v["canonical"].as_str().expect("canonical"),
                "canonical of {name}"
            );
            let hash = event_hash(args.0, args.1, args.2, args.3, args.4);
            assert_eq!(
                hash,
                v["eventHash"].as_str().expect("eventHash"),
                "eventHash of {name}"
            );
            assert_eq!(
                hash,
                sha256_hex(canonical.as_bytes()),
                "streamed hash of {name}"
            );
        }
    }

    #[test]
    fn vendored_vectors_match_the_shared_copy() {
        let shared = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/event_hash.json"
        );
        match std::fs::read_to_string(shared) {
            Ok(text) => assert_eq!(
                text, VECTORS,
                "actors/tests/data/event_hash.json has drifted from {shared}; copy it again"
            ),
            // Outside the monorepo layout there is nothing to compare against.
            Err(_) => eprintln!("{shared} not found; drift check skipped"),
        }
    }

    #[test]
    fn rfc8785_number_serialization_table() {
        // RFC 8785 Appendix B: IEEE-754 bit patterns and their expected JCS text.
        let table: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for &(bits, expected) in table {
            let value = Value::Number(Number::from_f64(f64::from_bits(bits)).expect("finite"));
            assert_eq!(canonical_json(&value), expected, "bits {bits:016x}");
        }
    }

    #[test]
    fn rfc8785_section_3_2_2_example() {
        // The numbers are built from Rust literals (correctly rounded) rather than parsed:
        // see `serde_json_parses_decimal_text_to_the_nearest_double`.
        let mut value = parse(
            r#"{
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#,
        );
        value["numbers"] = json!([
            333333333.33333329_f64,
            1E30,
            4.50,
            2e-3,
            0.000000000000000000000000001
        ]);
        let expected = concat!(
            r#"{"literals":[null,true,false],"#,
            r#""numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"#,
            r#""string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        assert_eq!(canonical_json(&value), expected);
    }

    /// JCS hashes agree across implementations only if every party reads decimal text as
    /// the nearest double. serde_json does that only with its `float_roundtrip` feature;
    /// without it `333333333.33333329` reads one ULP low and hashes differently from a
    /// JavaScript or .NET client; the workspace enables it.
    #[test]
    fn serde_json_parses_decimal_text_to_the_nearest_double() {
        let parsed: f64 = serde_json::from_str("333333333.33333329").expect("parses");
        assert_eq!(parsed, 333333333.33333329_f64);
        assert_eq!(
            canonical_json(&parse("333333333.33333329")),
            "333333333.3333333"
        );
    }

    #[test]
    fn rfc8785_section_3_2_3_sorting_example() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                        \"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\
                        \"😀\":\"Emoji: Grinning Face\",\
                        \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical_json(&parse(input)), expected);
    }

    #[test]
    fn small_numbers_from_the_brief() {
        for (input, expected) in [
            ("1e30", "1e+30"),
            ("4.5", "4.5"),
            ("4.50", "4.5"),
            ("0.002", "0.002"),
            ("1e-7", "1e-7"),
            ("2.0", "2"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("1E21", "1e+21"),
            ("123e20", "1.23e+22"),
            ("100", "100"),
            ("-17", "-17"),
        ] {
            assert_eq!(canonical_json(&parse(input)), expected, "{input}");
        }
    }

    #[test]
    fn numbers_built_from_doubles() {
        for (f, expected) in [
            (1e30_f64, "1e+30"),
            (4.5, "4.5"),
            (0.002, "0.002"),
            (1e-7, "1e-7"),
            (333333333.33333329, "333333333.3333333"),
            (2.0, "2"),
            (-0.0, "0"),
        ] {
            assert_eq!(canonical_json(&json!(f)), expected, "{f}");
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_print_as_their_double() {
        let cases: [(Value, &str); 6] = [
            (json!(9007199254740992_u64), "9007199254740992"),
            (json!(9007199254740993_u64), "9007199254740992"),
            (json!(-9007199254740993_i64), "-9007199254740992"),
            (json!(u64::MAX), "18446744073709552000"),
            (json!(i64::MIN), "-9223372036854776000"),
            (json!(i64::MAX), "9223372036854776000"),
        ];
        for (value, expected) in cases {
            assert_eq!(canonical_json(&value), expected, "{value}");
        }
    }

    #[test]
    fn escapes_exactly_as_jcs() {
        let s = "\"\\/\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}\u{2028}é😀";
        let expected = "\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0000\\u001f\u{7f}\u{2028}é😀\"";
        assert_eq!(canonical_json(&Value::String(s.to_owned())), expected);
    }

    #[test]
    fn utf16_order_differs_from_byte_order_for_surrogates() {
        // U+1F600 is above U+FF61 in code points but below it in UTF-16 (0xD83D < 0xFF61).
        assert_eq!(utf16_cmp("😀", "｡"), Ordering::Less);
        assert!("😀".as_bytes() > "｡".as_bytes());
        let value = json!({"｡": 2, "😀": 1, "a": 0});
        assert_eq!(canonical_json(&value), "{\"a\":0,\"😀\":1,\"｡\":2}");
    }

    #[test]
    fn nested_structures_and_literals() {
        let value = json!({"b": [1, {"d": null, "c": false}], "a": {}, "": []});
        assert_eq!(
            canonical_json(&value),
            r#"{"":[],"a":{},"b":[1,{"c":false,"d":null}]}"#
        );
    }

    #[test]
    fn write_canonical_appends() {
        let mut out = String::from("x=");
        write_canonical(&json!([true]), &mut out);
        assert_eq!(out, "x=[true]");
    }

    #[test]
    fn canonical_sha256_matches_hash_of_text() {
        let value =
            json!({"policy": {"a": 1}, "featureFlags": {}, "notificationDefaults": {"x": "y"}});
        assert_eq!(
            canonical_sha256_hex(&value),
            sha256_hex(canonical_json(&value).as_bytes())
        );
    }

    #[test]
    fn sha256_hex_known_answer() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn time_bucket_floors_including_before_1970() {
        assert_eq!(time_bucket(1_767_323_045, 60), 1_767_323_040);
        assert_eq!(time_bucket(1_767_323_040, 60), 1_767_323_040);
        assert_eq!(time_bucket(0, 60), 0);
        assert_eq!(time_bucket(-1, 60), -60);
        assert_eq!(time_bucket(-60, 60), -60);
        assert_eq!(time_bucket(-61, 60), -120);
        assert_eq!(time_bucket(59, 1), 59);
    }

    #[test]
    fn time_bucket_never_panics_on_odd_input() {
        assert_eq!(time_bucket(1234, 0), 1234);
        assert_eq!(time_bucket(1234, -60), 1234);
        assert_eq!(time_bucket(i64::MIN, 60), i64::MIN);
        assert_eq!(
            time_bucket(i64::MAX, 60),
            i64::MAX - i64::MAX.rem_euclid(60)
        );
        assert_eq!(time_bucket(i64::MIN, i64::MAX), i64::MIN);
    }

    #[test]
    fn event_hash_floors_pre_1970_occurred_at() {
        let t = DateTime::parse_from_rfc3339("1969-12-31T23:59:59.5Z").expect("valid");
        let input = event_hash_input("x", &json!({}), t, "u", 60);
        assert!(input.contains("\"timeBucket\":-60"), "{input}");
    }

    // ----- property tests -----

    /// Numbers whose text serde_json parses back to the same double (without its
    /// `float_roundtrip` feature a few doubles come back one ULP off, which is a parser
    /// property, not ours).
    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1_000_000i64..1_000_000).prop_map(Value::from),
            any::<f64>().prop_filter_map("finite and round-trips", |f| {
                let n = Number::from_f64(f)?;
                let back: f64 = serde_json::from_str(&n.to_string()).ok()?;
                (back == f).then_some(Value::Number(n))
            }),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            any::<String>().prop_map(Value::String),
            "[a-c\u{e000}\u{1f600}\u{7f}\"\\\\]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        any::<String>(),
                        "[a-c\u{e000}\u{ff61}\u{1f600}]{0,3}".prop_map(String::from)
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Serializes `value` the way a careless client might: keys in reverse order and
    /// whitespace everywhere whitespace is allowed.
    fn scrambled_text(value: &Value, out: &mut String) {
        match value {
            Value::Array(items) => {
                out.push_str("[ \n");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\t");
                    }
                    scrambled_text(item, out);
                }
                out.push_str(" ]");
            }
            Value::Object(map) => {
                out.push_str("{\r\n ");
                for (i, (k, v)) in map.iter().rev().enumerate() {
                    if i > 0 {
                        out.push_str(" , ");
                    }
                    out.push_str(&serde_json::to_string(k).expect("string serializes"));
                    out.push_str(" :\n");
                    scrambled_text(v, out);
                }
                out.push_str("\t}");
            }
            other => out.push_str(&serde_json::to_string(other).expect("scalar serializes")),
        }
    }

    /// Equality up to number spelling: JCS maps every number to a double, so `2.0` and `2`
    /// (and a u64 above 2^53 and its rounded double) are the same JCS value.
    fn same_jcs_value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_jcs_value(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same_jcs_value(v, w)))
            }
            _ => a == b,
        }
    }

    fn fixed_time() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").expect("valid")
    }

    proptest! {
        #[test]
        fn key_order_and_whitespace_never_change_the_hash(payload in json_value()) {
            let mut text = String::new();
            scrambled_text(&payload, &mut text);
            let reparsed: Value = serde_json::from_str(&text).expect("scrambled text parses");
            prop_assert_eq!(
                event_hash("t", &payload, fixed_time(), "u", 60),
                event_hash("t", &reparsed, fixed_time(), "u", 60)
            );
            prop_assert_eq!(canonical_json(&payload), canonical_json(&reparsed));
        }

        #[test]
        fn canonical_output_reparses_to_an_equal_value(value in json_value()) {
            let text = canonical_json(&value);
            let back: Value = serde_json::from_str(&text).expect("canonical output is JSON");
            prop_assert!(same_jcs_value(&value, &back), "{} vs {}", value, back);
        }

        #[test]
        fn canonicalization_is_idempotent(value in json_value()) {
            let once = canonical_json(&value);
            let reparsed: Value = serde_json::from_str(&once).expect("canonical output is JSON");
            let twice = canonical_json(&reparsed);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn streamed_hash_equals_hash_of_text(
            value in json_value(),
            user in ".{0,8}",
            secs in any::<i32>(),
        ) {
            let t = DateTime::from_timestamp(i64::from(secs), 0).expect("in range").fixed_offset();
            prop_assert_eq!(
                event_hash("e", &value, t, &user, 60),
                sha256_hex(event_hash_input("e", &value, t, &user, 60).as_bytes())
            );
        }

        #[test]
        fn time_bucket_is_the_floor_multiple(t in -(1i64 << 50)..(1i64 << 50), b in 1i64..100_000) {
            let bucket = time_bucket(t, b);
            prop_assert!(bucket <= t);
            prop_assert!(t - bucket < b);
            prop_assert_eq!(bucket.rem_euclid(b), 0);
        }
    }
}
