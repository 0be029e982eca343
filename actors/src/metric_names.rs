//! Every metric the sidecar exports, named in one place beside its description, and the
//! label values each one starts with: contract section 10 asks that every series exist from
//! start-up (at zero), so dashboards and alerts never see a missing series.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "sidecar_upstream_requests_total";
pub const UPSTREAM_REQUEST_DURATION_SECONDS: &str = "sidecar_upstream_request_duration_seconds";
pub const CIRCUIT_STATE: &str = "sidecar_circuit_state";
pub const EVENTS_TOTAL: &str = "sidecar_events_total";
pub const OUTBOX_PENDING: &str = "sidecar_outbox_pending";
pub const QUEUE_LAG: &str = "sidecar_queue_lag";
pub const BACKPRESSURE_ACTIVE: &str = "sidecar_backpressure_active";
pub const RATE_LIMITED_TOTAL: &str = "sidecar_rate_limited_total";
pub const RATE_LIMIT_FALLBACK_TOTAL: &str = "sidecar_rate_limit_fallback_total";
pub const ACTOR_RESTARTS_TOTAL: &str = "sidecar_actor_restarts_total";
pub const ADMIN_MFA_REFUSED_TOTAL: &str = "sidecar_admin_mfa_refused_total";
pub const CONFIG_CACHE_TOTAL: &str = "sidecar_config_cache_total";
pub const HASH_MISMATCH_TOTAL: &str = "sidecar_event_hash_mismatch_total";

/// Upstream operation names (`operation` label of the upstream metrics).
pub const UPSTREAM_OPERATIONS: [&str; 9] = [
    "login",
    "mfa_verify",
    "refresh",
    "logout",
    "introspect",
    "jwks",
    "config",
    "preferences_get",
    "preferences_put",
];
/// Upstream call outcomes (`outcome` label).
pub const UPSTREAM_OUTCOMES: [&str; 5] = [
    "success",
    "client_error",
    "failure",
    "timeout",
    "short_circuited",
];
/// Event outcomes (`outcome` label of `sidecar_events_total`).
pub const EVENT_OUTCOMES: [&str; 3] = ["accepted", "duplicate", "rejected"];
/// Rate-limit scopes (`scope` label).
pub const RATE_LIMIT_SCOPES: [&str; 3] = ["user", "device", "ip"];
/// Config cache results (`result` label).
pub const CONFIG_CACHE_RESULTS: [&str; 4] = ["hit", "refresh", "stale", "miss"];
/// The one upstream the sidecar has (`upstream` label of the circuit state).
pub const UPSTREAM_DOTNET: &str = "dotnet";

/// Describes every metric to the installed recorder and creates each known series at zero.
/// `actor_names` are the supervised children, `consumers` the watched JetStream consumers.
pub fn register_all(actor_names: &[String], consumers: &[String]) {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests served, by method, route template and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request duration by route template"
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        "Calls to .NET by operation and outcome"
    );
    describe_histogram!(
        UPSTREAM_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of calls to .NET by operation"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(EVENTS_TOTAL, "Events judged by POST /events, by outcome");
    describe_gauge!(
        OUTBOX_PENDING,
        "Accepted events not yet published to JetStream"
    );
    describe_gauge!(
        QUEUE_LAG,
        "JetStream consumer lag (pending + ack pending) per consumer"
    );
    describe_gauge!(
        BACKPRESSURE_ACTIVE,
        "1 while /events sheds load with 429 backpressure"
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests denied by a token bucket, by scope"
    );
    describe_counter!(
        RATE_LIMIT_FALLBACK_TOTAL,
        "Rate-limit decisions made in memory because Redis was unreachable"
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        "Restarts of supervised actors, by actor"
    );
    describe_counter!(
        ADMIN_MFA_REFUSED_TOTAL,
        "Admin logins refused because .NET skipped MFA"
    );
    describe_counter!(CONFIG_CACHE_TOTAL, "GET /config answers by cache result");
    describe_counter!(
        HASH_MISMATCH_TOTAL,
        "Duplicates whose hash differs from the stored one"
    );

    for op in UPSTREAM_OPERATIONS {
        for outcome in UPSTREAM_OUTCOMES {
            metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "operation" => op, "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::gauge!(CIRCUIT_STATE, "upstream" => UPSTREAM_DOTNET).set(0.0);
    for outcome in EVENT_OUTCOMES {
        metrics::counter!(EVENTS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::gauge!(OUTBOX_PENDING).set(0.0);
    for consumer in consumers {
        metrics::gauge!(QUEUE_LAG, "consumer" => consumer.clone()).set(0.0);
    }
    metrics::gauge!(BACKPRESSURE_ACTIVE).set(0.0);
    for scope in RATE_LIMIT_SCOPES {
        metrics::counter!(RATE_LIMITED_TOTAL, "scope" => scope).increment(0);
    }
    metrics::counter!(RATE_LIMIT_FALLBACK_TOTAL).increment(0);
    for actor in actor_names {
        metrics::counter!(ACTOR_RESTARTS_TOTAL, "actor" => actor.clone()).increment(0);
    }
    metrics::counter!(ADMIN_MFA_REFUSED_TOTAL).increment(0);
    for result in CONFIG_CACHE_RESULTS {
        metrics::counter!(CONFIG_CACHE_TOTAL, "result" => result).increment(0);
    }
    metrics::counter!(HASH_MISMATCH_TOTAL).increment(0);
}
