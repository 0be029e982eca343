//! Fault injection (error answers, latency) and the record of every request.
//!
//! Both are applied by a wrapper around the whole application (see `routes::Instrumented`),
//! never to the control routes under `/__emulator/`, which must keep working while a test
//! breaks everything else.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use poem::http::{HeaderMap, StatusCode};
use poem::Response;
use serde::{Deserialize, Serialize};

/// Which requests a fault or a latency applies to.
fn path_matches(pattern: &Option<String>, path: &str) -> bool {
    match pattern.as_deref() {
        None => true,
        // "/users/*" matches every path under /users/.
        Some(p) if p.ends_with('*') => path.starts_with(&p[..p.len() - 1]),
        Some(p) => p == path,
    }
}

fn method_matches(pattern: &Option<String>, method: &str) -> bool {
    pattern
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(method))
}

/// An injected answer. Built with [`Fault::status`] and the builder methods, or sent as JSON to
/// `POST /__emulator/faults` (every field optional; `status` defaults to 500).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fault {
    pub status: u16,
    /// How many matching requests get it; `None`: every one until cleared.
    pub times: Option<usize>,
    /// Exact path, or a prefix ending in `*`; `None`: every path.
    pub path: Option<String>,
    /// HTTP method; `None`: any.
    pub method: Option<String>,
    /// A `Retry-After` value to send (e.g. `"3"`, or an HTTP date).
    pub retry_after: Option<String>,
    /// Body to send instead of the default problem+json (e.g. garbage, for 502 tests).
    pub body: Option<String>,
    /// Content type of `body` (default `application/json`).
    pub content_type: Option<String>,
    /// Process the request first (state changes happen, e.g. a refresh token is spent), then
    /// answer the fault instead of the real response: ".NET acted but the answer was lost".
    pub after_processing: bool,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            status: 500,
            times: None,
            path: None,
            method: None,
            retry_after: None,
            body: None,
            content_type: None,
            after_processing: false,
        }
    }
}

impl Fault {
    /// A fault answering `status` to every request until cleared.
    pub fn status(status: u16) -> Fault {
        Fault {
            status,
            ..Fault::default()
        }
    }

    pub fn times(mut self, n: usize) -> Fault {
        self.times = Some(n);
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Fault {
        self.path = Some(path.into());
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Fault {
        self.method = Some(method.into());
        self
    }

    pub fn retry_after(mut self, value: impl Into<String>) -> Fault {
        self.retry_after = Some(value.into());
        self
    }

    pub fn body(mut self, content_type: impl Into<String>, body: impl Into<String>) -> Fault {
        self.content_type = Some(content_type.into());
        self.body = Some(body.into());
        self
    }

    pub fn after_processing(mut self) -> Fault {
        self.after_processing = true;
        self
    }

    pub(crate) fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = Response::builder().status(status);
        if let Some(ra) = &self.retry_after {
            builder = builder.header("Retry-After", ra.as_str());
        }
        match &self.body {
            Some(body) => builder
                .content_type(
                    self.content_type
                        .clone()
                        .unwrap_or_else(|| "application/json".into()),
                )
                .body(body.clone()),
            None => builder.content_type("application/problem+json").body(
                serde_json::json!({
                    "type": "https://dotnet.local/problems/injected-fault",
                    "title": status.canonical_reason().unwrap_or("Error"),
                    "status": self.status,
                    "detail": "fault injected by the emulator",
                    "code": "injected_fault",
                })
                .to_string(),
            ),
        }
    }
}

/// An injected delay. Sent as JSON to `POST /__emulator/latency` too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub delay_ms: u64,
    pub times: Option<usize>,
    pub path: Option<String>,
    pub method: Option<String>,
    /// Process the request, then wait before answering: the caller's timeout fires after
    /// the backend acted (a refresh token spent, a session created).
    pub after_processing: bool,
}

impl Latency {
    /// Waits `delay` before processing every request, until cleared.
    pub fn new(delay: Duration) -> Latency {
        Latency {
            delay_ms: delay.as_millis() as u64,
            ..Latency::default()
        }
    }

    pub fn times(mut self, n: usize) -> Latency {
        self.times = Some(n);
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Latency {
        self.path = Some(path.into());
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Latency {
        self.method = Some(method.into());
        self
    }

    pub fn after_processing(mut self) -> Latency {
        self.after_processing = true;
        self
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }
}

/// Faults and latencies in force. The first matching entry of each list applies; an entry
/// whose `times` runs out is removed.
#[derive(Default)]
pub struct FaultState {
    inner: Mutex<(Vec<Fault>, Vec<Latency>)>,
}

/// Decrements `times` of the first entry matching, removing it when spent.
fn take_first<T: Clone>(
    list: &mut Vec<T>,
    matches: impl Fn(&T) -> bool,
    times: impl Fn(&mut T) -> &mut Option<usize>,
) -> Option<T> {
    let i = list.iter().position(matches)?;
    let taken = list[i].clone();
    if let Some(n) = times(&mut list[i]) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            list.remove(i);
        }
    }
    Some(taken)
}

impl FaultState {
    fn lock(&self) -> MutexGuard<'_, (Vec<Fault>, Vec<Latency>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_fault(&self, fault: Fault) {
        if fault.times != Some(0) {
            self.lock().0.push(fault);
        }
    }

    pub fn add_latency(&self, latency: Latency) {
        if latency.times != Some(0) {
            self.lock().1.push(latency);
        }
    }

    pub fn clear_faults(&self) {
        self.lock().0.clear();
    }

    pub fn clear_latency(&self) {
        self.lock().1.clear();
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.lock().0.clone()
    }

    pub fn latencies(&self) -> Vec<Latency> {
        self.lock().1.clone()
    }

    /// The fault and the latency for this request, each consumed once.
    pub fn take(&self, method: &str, path: &str) -> (Option<Fault>, Option<Latency>) {
        let mut g = self.lock();
        let fault = take_first(
            &mut g.0,
            |f| path_matches(&f.path, path) && method_matches(&f.method, method),
            |f| &mut f.times,
        );
        let latency = take_first(
            &mut g.1,
            |l| path_matches(&l.path, path) && method_matches(&l.method, method),
            |l| &mut l.times,
        );
        (fault, latency)
    }
}

/// One request as the emulator received it (headers and body unredacted: tests assert on
/// what was forwarded; nothing here is ever logged).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Keeps the last [`Recorder::CAPACITY`] requests and per-path counts since the last reset.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    /// A ring: the oldest is dropped in O(1) once full (a `Vec::remove(0)` moved ~2 MB per
    /// request at capacity, which serialized the emulator behind this lock under load).
    requests: VecDeque<RecordedRequest>,
    counts: HashMap<(String, String), usize>,
}

impl Recorder {
    /// Older requests are dropped past this (their counts are kept).
    pub const CAPACITY: usize = 10_000;

    fn lock(&self) -> MutexGuard<'_, RecorderInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, req: RecordedRequest) {
        let mut g = self.lock();
        *g.counts
            .entry((req.method.clone(), req.path.clone()))
            .or_default() += 1;
        if g.requests.len() >= Self::CAPACITY {
            g.requests.pop_front();
        }
        g.requests.push_back(req);
    }

    pub fn calls(&self, path: &str) -> usize {
        self.lock()
            .counts
            .iter()
            .filter(|((_, p), _)| p == path)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn calls_with_method(&self, method: &str, path: &str) -> usize {
        self.lock()
            .counts
            .get(&(method.to_ascii_uppercase(), path.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn counts(&self) -> Vec<(String, String, usize)> {
        let mut v: Vec<_> = self
            .lock()
            .counts
            .iter()
            .map(|((m, p), n)| (m.clone(), p.clone(), *n))
            .collect();
        v.sort();
        v
    }

    pub fn last(&self, path: &str) -> Option<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .rev()
            .find(|r| r.path == path)
            .cloned()
    }

    pub fn all(&self, path: Option<&str>) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| path.is_none_or(|p| r.path == p))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        *self.lock() = RecorderInner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_and_by_path() {
        let s = FaultState::default();
        s.add_fault(Fault::status(503).times(2).path("/auth/refresh"));
        s.add_fault(Fault::status(500).path("/users/*"));
        assert_eq!(s.take("POST", "/auth/login").0, None);
        assert_eq!(s.take("POST", "/auth/refresh").0.unwrap().status, 503);
        assert_eq!(s.take("POST", "/auth/refresh").0.unwrap().status, 503);
        assert_eq!(s.take("POST", "/auth/refresh").0, None);
        for _ in 0..3 {
            assert_eq!(s.take("GET", "/users/1/preferences").0.unwrap().status, 500);
        }
        s.clear_faults();
        assert_eq!(s.take("GET", "/users/1/preferences").0, None);
    }

    #[test]
    fn latency_by_method() {
        let s = FaultState::default();
        s.add_latency(
            Latency::new(Duration::from_millis(5))
                .method("put")
                .times(1),
        );
        assert!(s.take("GET", "/x").1.is_none());
        assert_eq!(s.take("PUT", "/x").1.unwrap().delay_ms, 5);
        assert!(s.take("PUT", "/x").1.is_none());
    }
}
