//! The JetStream side of the event path (contract 5.4): the stream's shape, the subject,
//! headers and body of each published event.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use super::store::EventRow;

/// JetStream's duplicate window the sidecar asks for: a replay within it is dropped by
/// `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the stream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error(
        "the existing JetStream stream {stream} has subjects {subjects:?}, which do not cover \
         `events.>`; add `events.>` to it or set EVENT_STREAM to another stream"
    )]
    SubjectsDoNotCover {
        stream: String,
        subjects: Vec<String>,
    },
    #[error("JetStream did not answer about stream {stream}: {reason}")]
    Unreachable { stream: String, reason: String },
}

impl StreamSetupError {
    /// A wrong configuration (start-up must fail), rather than NATS being unreachable.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::SubjectsDoNotCover { .. })
    }
}

/// Contract 12: subjects cover `events.>` when one of them is `events.>` or `>`.
pub fn subjects_cover_events(subjects: &[String]) -> bool {
    subjects.iter().any(|s| s == "events.>" || s == ">")
}

/// Creates the stream when it is missing (limits retention, file storage, max age, 2 min
/// duplicate window, subjects `events.>`); an existing one is used as it is, provided its
/// subjects cover `events.>`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    max_age_days: u32,
) -> Result<(), StreamSetupError> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec!["events.>".to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(u64::from(max_age_days) * 86_400),
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let unreachable = |reason: String| StreamSetupError::Unreachable {
        stream: name.to_owned(),
        reason,
    };
    let mut stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !subjects_cover_events(&info.config.subjects) {
        return Err(StreamSetupError::SubjectsDoNotCover {
            stream: name.to_owned(),
            subjects: info.config.subjects.clone(),
        });
    }
    Ok(())
}

/// `events.<eventType>`.
pub fn subject(event_type: &str) -> String {
    format!("events.{event_type}")
}

/// The published message of one event: `Nats-Msg-Id`, `Event-Hash`, `User-Id` headers and
/// the contract's body (`received_at` already formatted by [`timestamp`], once per batch).
pub fn message_of(row: &EventRow, received_at: &str) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    let mut id = uuid::Uuid::encode_buffer();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        &*row.event_id.hyphenated().encode_lower(&mut id),
    );
    headers.insert("Event-Hash", row.event_hash.as_str());
    headers.insert("User-Id", &*row.user_id);
    (headers, body_of(row, received_at))
}

/// `{"eventId", "eventType", "occurredAt", "receivedAt", "user_id", "device_id", "payload",
/// "eventHash"}`; the payload is embedded as the client wrote it, timestamps are UTC RFC 3339.
/// Written straight into one buffer (this runs once per published event).
pub fn body_of(row: &EventRow, received_at: &str) -> Bytes {
    let mut out = Vec::with_capacity(row.payload.len() + 320);
    let string = |out: &mut Vec<u8>, v: &str| {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
    };
    let mut id = uuid::Uuid::encode_buffer();
    out.extend_from_slice(b"{\"eventId\":\"");
    out.extend_from_slice(row.event_id.hyphenated().encode_lower(&mut id).as_bytes());
    out.extend_from_slice(b"\",\"eventType\":");
    string(&mut out, &row.event_type);
    out.extend_from_slice(b",\"occurredAt\":\"");
    out.extend_from_slice(timestamp(row.occurred_at).as_bytes());
    out.extend_from_slice(b"\",\"receivedAt\":\"");
    out.extend_from_slice(received_at.as_bytes());
    out.extend_from_slice(b"\",\"user_id\":");
    string(&mut out, &row.user_id);
    out.extend_from_slice(b",\"device_id\":");
    match &row.device_id {
        Some(d) => string(&mut out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(row.payload.as_bytes());
    out.extend_from_slice(b",\"eventHash\":\"");
    out.extend_from_slice(row.event_hash.as_bytes());
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

/// UTC RFC 3339 with as many fractional digits as needed (up to microseconds).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// What the aggregator reads back from a message body.
#[derive(Debug, serde::Deserialize)]
pub struct PublishedEvent {
    #[serde(rename = "eventId")]
    pub event_id: uuid::Uuid,
    #[serde(rename = "eventType")]
    pub event_type: String,
    #[serde(rename = "occurredAt")]
    pub occurred_at: DateTime<Utc>,
    pub user_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_rule() {
        assert!(subjects_cover_events(&["events.>".into()]));
        assert!(subjects_cover_events(&["x".into(), ">".into()]));
        assert!(!subjects_cover_events(&["events.*".into()]));
        assert!(!subjects_cover_events(&[]));
    }

    #[test]
    fn body_is_the_contract_shape() {
        let row = EventRow {
            event_id: uuid::Uuid::nil(),
            user_id: "u\"1".into(),
            device_id: None,
            event_type: "app.open".into(),
            occurred_at: "2026-12-04T11:59:00.5Z".parse().unwrap(),
            event_hash: "ab".into(),
            payload: r#"{"a": [1, 2]}"#.into(),
        };
        let body = body_of(&row, "2026-12-04T12:00:00Z");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["eventId"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(v["user_id"], "u\"1");
        assert_eq!(v["device_id"], serde_json::Value::Null);
        assert_eq!(v["occurredAt"], "2026-12-04T11:59:00.500Z");
        assert_eq!(v["receivedAt"], "2026-12-04T12:00:00Z");
        assert_eq!(v["payload"]["a"][1], 2);
        let back: PublishedEvent = serde_json::from_slice(&body).unwrap();
        let (headers, _) = message_of(&row, "2026-12-04T12:00:00Z");
        assert_eq!(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("00000000-0000-0000-0000-000000000000")
        );
        assert_eq!(headers.get("User-Id").map(|v| v.as_str()), Some("u\"1"));
        assert_eq!(back.event_type, "app.open");
    }
}
