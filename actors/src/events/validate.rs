//! Judging a `POST /events` body (contract 5.1 and 12) as pure functions: no actor, clock
//! or network, so every rule is unit-tested here.
//!
//! The body is parsed once into borrowed raw slices ([`RawValue`]): the envelope
//! `{"events": [...]}` first (a failure there is a whole-request error), then each event on
//! its own (a failure there rejects that event only). A payload is kept as the exact text
//! the client sent (stored and published verbatim) and parsed into a `Value` only for the
//! hash.

use std::borrow::Cow;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::canonical::event_hash;

/// The limits and parameters the judgement needs (from the settings).
#[derive(Debug, Clone)]
pub struct Rules {
    pub max_batch: usize,
    pub max_payload_bytes: usize,
    pub max_age_days: u32,
    pub hash_bucket_seconds: i64,
}

/// Why a whole request is refused (nothing is stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or not an object whose `events` is an array: 400 `invalid_request`.
    #[error("{0}")]
    Invalid(String),
    /// 0 events or more than the maximum: 422 `batch_size`.
    #[error("a batch holds 1..{max} events, this one has {count}")]
    BatchSize { count: usize, max: usize },
}

/// Why one event is rejected (the `reason` of its result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InvalidEvent,
    InvalidEventType,
    PayloadTooLarge,
    OccurredAtOutOfRange,
}

impl RejectReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidEvent => "invalid_event",
            Self::InvalidEventType => "invalid_event_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::OccurredAtOutOfRange => "occurred_at_out_of_range",
        }
    }
}

/// An event that passed validation, ready for the dedupe shards.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub event_id: Uuid,
    pub event_type: String,
    /// UTC, truncated to microseconds (what PostgreSQL keeps), so that the fast path and a
    /// replay from the table publish the same `occurredAt`.
    pub occurred_at: DateTime<Utc>,
    pub device_id: Option<String>,
    /// The payload object exactly as the client wrote it.
    pub payload: String,
    /// Contract 5.3.
    pub event_hash: String,
}

/// The judgement of one submitted event, before deduplication.
#[derive(Debug, Clone, PartialEq)]
pub enum Judged {
    Valid(ValidEvent),
    /// An earlier valid event of the same batch has this id: `duplicate`, with `hashMismatch`
    /// when its hash differs from that earlier one's (resolved after the shards answer).
    InBatchRepeat {
        first: usize,
        event: ValidEvent,
    },
    Rejected {
        /// The `eventId` member when it was a string (echoed as sent), else `None`.
        event_id: Option<String>,
        reason: RejectReason,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "eventId", default, borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(rename = "eventType", default, borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(rename = "occurredAt", default, borrow)]
    occurred_at: Option<&'a RawValue>,
    #[serde(default, borrow)]
    device_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// Judges a whole body for `user_id` at `now`: a whole-request error, or one judgement per
/// event in request order.
pub fn judge_batch(
    body: &[u8],
    user_id: &str,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Judged>, RequestError> {
    // serde would also build the envelope from a JSON array (members by position): the
    // contract wants an object, so look before deserializing (found by a property test).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(RequestError::Invalid(
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
                "the body must be an object whose `events` is an array".to_owned()
            } else {
                "the body is not valid JSON".to_owned()
            },
        ));
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(|err| {
        RequestError::Invalid(if err.is_data() {
            "the body must be an object whose `events` is an array".to_owned()
        } else {
            "the body is not valid JSON".to_owned()
        })
    })?;
    let count = envelope.events.len();
    if count == 0 || count > rules.max_batch {
        return Err(RequestError::BatchSize {
            count,
            max: rules.max_batch,
        });
    }
    let mut first_of: std::collections::HashMap<Uuid, usize> =
        std::collections::HashMap::with_capacity(count);
    let mut judged = Vec::with_capacity(count);
    for (index, raw) in envelope.events.iter().enumerate() {
        match judge_event(raw, user_id, rules, now) {
            Ok(event) => match first_of.get(&event.event_id) {
                Some(&first) => judged.push(Judged::InBatchRepeat { first, event }),
                None => {
                    first_of.insert(event.event_id, index);
                    judged.push(Judged::Valid(event));
                }
            },
            Err((event_id, reason)) => judged.push(Judged::Rejected { event_id, reason }),
        }
    }
    Ok(judged)
}

type Rejection = (Option<String>, RejectReason);

/// Judges one event on its own.
pub fn judge_event(
    raw: &RawValue,
    user_id: &str,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<ValidEvent, Rejection> {
    // An array would deserialize into the event by position; an event is an object.
    if !raw.get().starts_with('{') {
        return Err((None, RejectReason::InvalidEvent));
    }
    let wire: WireEvent = match serde_json::from_str(raw.get()) {
        Ok(wire) => wire,
        // Not an object, or a repeated member: still echo a string `eventId` if there is one.
        Err(_) => return Err((echo_id_of(raw), RejectReason::InvalidEvent)),
    };
    let echoed = wire.event_id.and_then(as_string).map(Cow::into_owned);
    let invalid = |reason| Err((echoed.clone(), reason));
    let Some(event_id) = echoed.as_deref().and_then(parse_event_id) else {
        return invalid(RejectReason::InvalidEvent);
    };
    let Some(event_type) = wire.event_type.and_then(as_string) else {
        return invalid(RejectReason::InvalidEvent);
    };
    let Some(occurred_at) = wire.occurred_at.and_then(as_string) else {
        return invalid(RejectReason::InvalidEvent);
    };
    let Ok(occurred_at) = DateTime::parse_from_rfc3339(&occurred_at) else {
        return invalid(RejectReason::InvalidEvent);
    };
    let device_id = match wire.device_id.map(|raw| (raw, as_string(raw))) {
        // `null` reads as absent.
        None => None,
        Some((raw, _)) if raw.get() == "null" => None,
        Some((_, Some(id))) if (1..=128).contains(&id.chars().count()) => Some(id.into_owned()),
        Some(_) => return invalid(RejectReason::InvalidEvent),
    };
    let Some(payload) = wire.payload.filter(|p| p.get().starts_with('{')) else {
        return invalid(RejectReason::InvalidEvent);
    };
    if !valid_event_type(&event_type) {
        return invalid(RejectReason::InvalidEventType);
    }
    let Ok(payload_value) = serde_json::from_str::<serde_json::Value>(payload.get()) else {
        return invalid(RejectReason::InvalidEvent);
    };
    // The limit is on the serialized (compact) form; the text as sent is never shorter, so
    // only a long one needs the compact length.
    if payload.get().len() > rules.max_payload_bytes
        && compact_len(&payload_value) > rules.max_payload_bytes
    {
        return invalid(RejectReason::PayloadTooLarge);
    }
    let instant = occurred_at.with_timezone(&Utc);
    if instant > now + Duration::hours(24)
        || instant < now - Duration::days(i64::from(rules.max_age_days))
    {
        return invalid(RejectReason::OccurredAtOutOfRange);
    }
    let event_hash = event_hash(
        &event_type,
        &payload_value,
        occurred_at,
        user_id,
        rules.hash_bucket_seconds,
    );
    Ok(ValidEvent {
        event_id,
        event_type: event_type.into_owned(),
        occurred_at: instant.trunc_subsecs(6),
        device_id,
        payload: payload.get().to_owned(),
        event_hash,
    })
}

/// A JSON string's value, or `None` for any other JSON type.
fn as_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
}

fn echo_id_of(raw: &RawValue) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    value.get("eventId")?.as_str().map(str::to_owned)
}

/// A hyphenated UUID (8-4-4-4-12 hex digits) in either case; other UUID spellings (simple,
/// braced, URN) are refused.
pub fn parse_event_id(text: &str) -> Option<Uuid> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) {
            *b == b'-'
        } else {
            b.is_ascii_hexdigit()
        };
        if !ok {
            return None;
        }
    }
    Uuid::try_parse(text).ok()
}

/// `^[a-z][a-z0-9_.:-]{0,63}$`.
pub fn valid_event_type(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes[1..].iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
        })
}

fn compact_len(value: &serde_json::Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            max_batch: 3,
            max_payload_bytes: 64,
            max_age_days: 30,
            hash_bucket_seconds: 60,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn event(id: &str) -> serde_json::Value {
        json!({"eventId": id, "eventType": "app.open", "occurredAt": "2026-12-04T11:59:00Z",
               "payload": {"a": 1}})
    }

    fn judge(body: serde_json::Value) -> Result<Vec<Judged>, RequestError> {
        judge_batch(body.to_string().as_bytes(), "u1", &rules(), now())
    }

    #[test]
    fn a_payload_nested_past_the_parser_limit_is_an_invalid_event() {
        let deep = |levels: usize| {
            format!(
                r#"{{"events":[{{"eventId":"8a1c2d3e-0000-4000-8000-000000000001","eventType":"app.open","occurredAt":"2026-12-04T11:59:00Z","payload":{{"a":{}1{}}}}}]}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        let big = Rules {
            max_payload_bytes: 1 << 20,
            ..rules()
        };
        let judged = judge_batch(deep(120).as_bytes(), "u1", &big, now()).unwrap();
        assert!(matches!(judged[0], Judged::Valid(_)), "{judged:?}");
        // serde_json's parser stops at 128 levels (its guard against stack exhaustion).
        let judged = judge_batch(deep(200).as_bytes(), "u1", &big, now()).unwrap();
        assert_eq!(reason(&judged[0]), Some(RejectReason::InvalidEvent));
    }

    fn reason(j: &Judged) -> Option<RejectReason> {
        match j {
            Judged::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    const ID: &str = "6f1c2a0e-8a1b-4c5d-9e7f-0a1b2c3d4e5f";

    #[test]
    fn whole_request_errors() {
        assert!(matches!(
            judge_batch(b"not json", "u", &rules(), now()),
            Err(RequestError::Invalid(_))
        ));
        for body in [
            json!([]),
            json!({"events": {}}),
            json!({"other": []}),
            json!(5),
        ] {
            assert!(
                matches!(judge(body.clone()), Err(RequestError::Invalid(_))),
                "{body}"
            );
        }
        assert_eq!(
            judge(json!({"events": []})),
            Err(RequestError::BatchSize { count: 0, max: 3 })
        );
        let four = vec![event(ID); 4];
        assert_eq!(
            judge(json!({ "events": four })),
            Err(RequestError::BatchSize { count: 4, max: 3 })
        );
    }

    #[test]
    fn a_valid_event_is_normalized_and_hashed() {
        let upper = ID.to_uppercase();
        let judged = judge(json!({"events": [event(&upper)], "extra": true})).unwrap();
        let Judged::Valid(e) = &judged[0] else {
            panic!("{judged:?}")
        };
        assert_eq!(e.event_id.to_string(), ID);
        assert_eq!(e.payload, r#"{"a":1}"#);
        assert_eq!(e.event_hash.len(), 64);
        assert_eq!(e.device_id, None);
    }

    #[test]
    fn per_event_rejections() {
        let mut wrong_type = event(ID);
        wrong_type["eventType"] = json!(7);
        let mut bad_type = event(ID);
        bad_type["eventType"] = json!("App.Open");
        let mut long_type = event(ID);
        long_type["eventType"] = json!("a".repeat(65));
        let mut future = event(ID);
        future["occurredAt"] = json!("2026-12-05T12:00:01Z");
        let mut old = event(ID);
        old["occurredAt"] = json!("2026-11-04T11:59:59Z");
        let mut not_rfc = event(ID);
        not_rfc["occurredAt"] = json!("2026-12-04 noon");
        let mut big = event(ID);
        big["payload"] = json!({"x": "y".repeat(80)});
        let mut array_payload = event(ID);
        array_payload["payload"] = json!([1]);
        let mut long_device = event(ID);
        long_device["device_id"] = json!("d".repeat(129));
        let mut empty_device = event(ID);
        empty_device["device_id"] = json!("");
        let mut simple_uuid = event(ID);
        simple_uuid["eventId"] = json!(ID.replace('-', ""));
        let mut missing_payload = event(ID);
        missing_payload.as_object_mut().unwrap().remove("payload");
        let cases = [
            (wrong_type, RejectReason::InvalidEvent),
            (bad_type, RejectReason::InvalidEventType),
            (long_type, RejectReason::InvalidEventType),
            (future, RejectReason::OccurredAtOutOfRange),
            (old, RejectReason::OccurredAtOutOfRange),
            (not_rfc, RejectReason::InvalidEvent),
            (big, RejectReason::PayloadTooLarge),
            (array_payload, RejectReason::InvalidEvent),
            (long_device, RejectReason::InvalidEvent),
            (empty_device, RejectReason::InvalidEvent),
            (simple_uuid, RejectReason::InvalidEvent),
            (missing_payload, RejectReason::InvalidEvent),
        ];
        for (body, expected) in cases {
            let judged = judge(json!({ "events": [body.clone()] })).unwrap();
            assert_eq!(reason(&judged[0]), Some(expected), "{body}");
        }
    }

    #[test]
    fn rejected_results_echo_a_string_id_only() {
        let judged = judge(json!({"events": [5, {"eventId": 12}, {"eventId": "nope"}]})).unwrap();
        let ids: Vec<_> = judged
            .iter()
            .map(|j| match j {
                Judged::Rejected { event_id, .. } => event_id.clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(ids, vec![None, None, Some("nope".to_owned())]);
    }

    #[test]
    fn whitespace_in_the_payload_is_kept_and_sized_compactly() {
        let body = format!(
            r#"{{"events":[{{"eventId":"{ID}","eventType":"a","occurredAt":"2026-12-04T11:00:00Z","payload":{{"k":   {}  }}}}]}}"#,
            "1".repeat(40)
        );
        let judged = judge_batch(body.as_bytes(), "u", &rules(), now()).unwrap();
        assert!(matches!(&judged[0], Judged::Valid(e) if e.payload.contains("   ")));
    }

    #[test]
    fn in_batch_repeats() {
        let mut bad = event(ID);
        bad["eventType"] = json!("BAD");
        let judged = judge(json!({"events": [bad, event(ID), event(ID)]})).unwrap();
        assert_eq!(reason(&judged[0]), Some(RejectReason::InvalidEventType));
        assert!(matches!(judged[1], Judged::Valid(_)));
        assert!(matches!(judged[2], Judged::InBatchRepeat { first: 1, .. }));
    }

    #[test]
    fn event_type_grammar() {
        for ok in ["a", "app.open", "a:b-c_d.9", &"a".repeat(64)] {
            assert!(valid_event_type(ok), "{ok}");
        }
        for bad in ["", "1a", "A", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(!valid_event_type(bad), "{bad}");
        }
    }
}
