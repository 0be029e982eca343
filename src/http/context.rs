//! What the conventions middleware learns about a request before any handler runs: its id,
//! its W3C trace context, and the client's address. Handlers read it as
//! `Data<&RequestContext>` and hand it to the bridge so that .NET sees the same ids.

use std::net::IpAddr;
use std::sync::Mutex;

use rand::RngCore;

/// The W3C `traceparent` of this request (https://www.w3.org/TR/trace-context/).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex characters, shared by every span of the trace.
    pub trace_id: String,
    /// 16 lowercase hex characters: the caller's span (the client's, or ours when new).
    pub parent_id: String,
    /// Trace flags (bit 0 = sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` header; `None` when it is not a valid version-00 value.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Future versions may append fields; version 00 may not.
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let valid = trace_id.len() == 32
            && parent_id.len() == 16
            && flags.len() == 2
            && is_lower_hex(trace_id)
            && is_lower_hex(parent_id)
            && is_lower_hex(flags)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        if !valid {
            return None;
        }
        Some(TraceContext {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// A new trace, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: random_hex(16),
            parent_id: random_hex(8),
            flags: 1,
        }
    }

    /// The `traceparent` for an outgoing call: same trace id, a new span id.
    pub fn child_header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, random_hex(8), self.flags)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts a client's `X-Request-Id` only if it is 1..128 chars of `[A-Za-z0-9._-]`.
pub fn valid_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Per-request facts, set by the conventions middleware.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub trace: TraceContext,
    /// The client as the contract defines it (socket peer, or right-most untrusted
    /// `X-Forwarded-For` hop when the peer is a trusted proxy).
    pub client_ip: Option<IpAddr>,
    /// The `X-Forwarded-For` chain to send to .NET: what we received plus our peer.
    pub forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    /// A problem body from .NET to pass through verbatim (with `requestId` added).
    pub upstream_problem: Mutex<Option<serde_json::Value>>,
}

impl RequestContext {
    pub fn set_upstream_problem(&self, body: serde_json::Value) {
        if let Ok(mut slot) = self.upstream_problem.lock() {
            *slot = Some(body);
        }
    }

    pub fn take_upstream_problem(&self) -> Option<serde_json::Value> {
        self.upstream_problem
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
    }

    /// The headers a call to .NET made for this request carries (contract section 9):
    /// the same request id, the same trace with a new span, the forwarded chain and the
    /// client's user agent.
    pub fn forward_headers(&self) -> actors::bridge::ForwardHeaders {
        actors::bridge::ForwardHeaders {
            request_id: Some(self.request_id.clone()),
            traceparent: Some(self.trace.child_header()),
            forwarded_for: self.forwarded_for.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_traceparent() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, "00f067aa0ba902b7");
        let child = t.child_header();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!child.contains("00f067aa0ba902b7"));
        assert!(child.ends_with("-01"));
    }

    #[test]
    fn rejects_invalid_traceparent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        assert!(TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
    }

    #[test]
    fn request_id_rules() {
        assert!(valid_request_id("abc-123_X.y"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id("ünicode"));
    }
}
