//! `POST /events` (contract 5.1): translate only. The body goes, as bytes, to
//! [`EventIngest::submit`] with the caller's user id; the answer becomes the 200 body or a
//! problem. Parsing is done once, by the ingest core, into borrowed slices; the response is
//! serialized straight from its struct (no intermediate `Value`).

use std::sync::Arc;

use actors::events::ingest::{BatchOutcome, EventIngest, IngestError, Status};
use actors::events::validate::RequestError;
use actors::rate_limiter::Verdict;
use actors::token_bucket::Scope;
use bytes::Bytes;
use poem::http::StatusCode;
use poem::web::Data;
use poem::{IntoResponse, Request, RequestBody, Response};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
};

use super::context::RequestContext;
use super::problem::{Problem, ProblemResponse};
use super::security::BearerAuth;
use super::ApiTags;
use crate::abuse::AbuseControls;

/// How long `Retry-After` tells a client to wait when the store is down.
const STORE_RETRY_AFTER_SECONDS: u64 = 1;

/// One submitted event (documentation of the wire shape; the body is judged event by event
/// by the ingest core, so a malformed event rejects that event only).
#[derive(Object)]
#[oai(rename = "Event")]
pub struct EventDoc {
    /// A hyphenated UUID, either case; answered normalized to lowercase.
    #[oai(rename = "eventId")]
    event_id: String,
    /// `^[a-z][a-z0-9_.:-]{0,63}$`
    #[oai(rename = "eventType")]
    event_type: String,
    /// RFC 3339; at most 24 h in the future and `EVENT_MAX_AGE_DAYS` in the past.
    #[oai(rename = "occurredAt")]
    occurred_at: String,
    /// 1..128 characters; `null` reads as absent.
    device_id: Option<String>,
    /// A JSON object, at most `EVENT_MAX_PAYLOAD_BYTES` serialized.
    payload: serde_json::Value,
}

/// `{"events": [Event, ...]}` with 1..`EVENT_MAX_BATCH` events.
#[derive(Object)]
#[oai(rename = "EventBatch")]
pub struct EventBatchDoc {
    /// Each item should be an `Event` (see that schema). Items are judged one by one: a
    /// malformed item (not an object, a missing or mistyped field) is answered `rejected`
    /// with reason `invalid_event` in a 200, and the rest of the batch goes on (contract
    /// 5.1), so the items are typed as any JSON value here.
    events: Vec<serde_json::Value>,
}

/// The raw `POST /events` body, documented as [`EventBatchDoc`].
pub struct EventBatchBody(pub Bytes);

impl<'a> ApiExtractor<'a> for EventBatchBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        EventBatchDoc::register(registry);
        EventDoc::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: EventBatchDoc::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        _request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        // The conventions middleware has already read and bounded the body.
        let bytes = body
            .take()
            .map_err(|_| Problem::invalid_request("the body must be a JSON object"))?
            .into_bytes()
            .await
            .map_err(|_| Problem::invalid_request("the request body could not be read"))?;
        Ok(Self(bytes))
    }
}

/// One result, in request order.
#[derive(Object, serde::Serialize)]
#[oai(rename = "EventResult")]
pub struct EventResult {
    /// The event's id (normalized for valid events; as sent for a rejected one when it
    /// was a string; else `null`).
    #[oai(rename = "eventId", nullable)]
    #[serde(rename = "eventId")]
    event_id: Option<String>,
    /// `accepted`, `duplicate` or `rejected`.
    status: String,
    /// Hash of the event as submitted now (accepted and duplicate).
    #[oai(rename = "eventHash", skip_serializing_if_is_none)]
    #[serde(rename = "eventHash", skip_serializing_if = "Option::is_none")]
    event_hash: Option<String>,
    /// `true` for a duplicate whose hash differs from the stored one; else absent.
    #[oai(rename = "hashMismatch", skip_serializing_if_is_none)]
    #[serde(rename = "hashMismatch", skip_serializing_if = "Option::is_none")]
    hash_mismatch: Option<bool>,
    /// Why it was rejected (rejected only).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The answer of a judged batch.
#[derive(Object, serde::Serialize)]
#[oai(rename = "EventBatchResult")]
pub struct EventBatchResult {
    results: Vec<EventResult>,
    accepted: usize,
    duplicates: usize,
    rejected: usize,
}

impl From<BatchOutcome> for EventBatchResult {
    fn from(o: BatchOutcome) -> Self {
        let results = o
            .results
            .into_iter()
            .map(|r| {
                let (status, hash_mismatch, reason) = match r.status {
                    Status::Accepted => ("accepted", None, None),
                    Status::Duplicate { hash_mismatch } => {
                        ("duplicate", hash_mismatch.then_some(true), None)
                    }
                    Status::Rejected(reason) => ("rejected", None, Some(reason.code())),
                };
                EventResult {
                    event_id: r.event_id,
                    status: status.to_owned(),
                    event_hash: r.event_hash,
                    hash_mismatch,
                    reason: reason.map(str::to_owned),
                }
            })
            .collect();
        Self {
            results,
            accepted: o.accepted,
            duplicates: o.duplicates,
            rejected: o.rejected,
        }
    }
}

/// A JSON body serialized with serde directly, documented as `T`.
pub struct SerdeJson<T>(pub T);

impl<T: Type + Send> poem_openapi::payload::Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";
    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }
    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: serde::Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(body),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

#[derive(ApiResponse)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum PostEventsResponse {
    /// Every event judged: one result per event, in request order.
    #[oai(status = 200)]
    Judged(
        SerdeJson<EventBatchResult>,
        /// draft-ietf-httpapi-ratelimit-headers-09 policy of the bucket closest to
        /// exhaustion after this request (absent when it charged nothing).
        #[oai(header = "RateLimit-Policy")]
        Option<String>,
        /// draft-ietf-httpapi-ratelimit-headers-09 state of that bucket.
        #[oai(header = "RateLimit")]
        Option<String>,
    ),
}

pub struct EventsApi {
    pub ingest: EventIngest,
    /// Backpressure and rate limits, consulted before anything is stored.
    pub abuse: AbuseControls,
}

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// Submit a batch of events. Each event is `accepted` (durably stored, and queued to
    /// JetStream exactly once), `duplicate` (its `eventId` was accepted before, from any
    /// replica) or `rejected` (with a reason). Whole-request errors store nothing.
    #[oai(path = "/events", method = "post", operation_id = "postEvents")]
    async fn post_events(
        &self,
        auth: BearerAuth,
        ctx: Data<&Arc<RequestContext>>,
        body: EventBatchBody,
    ) -> Result<PostEventsResponse, ProblemResponse> {
        // Shedding must stay cheap: refuse before reading the batch.
        if let Some(retry_after) = self.abuse.backpressure.shedding() {
            return Err(Problem::backpressure(retry_after).into());
        }
        let user = auth.0.user_id.as_str();
        let batch = self.ingest.judge(user, &body.0).map_err(problem_of)?;
        let verdict = self
            .abuse
            .limiter
            .check(
                user,
                ctx.client_ip,
                &batch.device_counts(),
                batch.valid_events(),
            )
            .await;
        if !verdict.allowed {
            return Err(Problem::rate_limited(
                rate_limited_detail(&verdict),
                verdict.retry_after_secs,
                verdict.rate_limit,
            )
            .into());
        }
        let outcome = self.ingest.store(batch).await.map_err(problem_of)?;
        let (policy, state) = verdict.rate_limit.unzip();
        Ok(PostEventsResponse::Judged(
            SerdeJson(outcome.into()),
            policy,
            state,
        ))
    }
}

fn problem_of(err: IngestError) -> ProblemResponse {
    match err {
        IngestError::Request(RequestError::Invalid(detail)) => Problem::invalid_request(detail),
        IngestError::Request(err @ RequestError::BatchSize { .. }) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_size",
            err.to_string(),
        ),
        IngestError::StoreUnavailable => Problem::store_unavailable(STORE_RETRY_AFTER_SECONDS),
    }
    .into()
}

/// Says which limit was hit, and whether waiting can help at all.
fn rate_limited_detail(verdict: &Verdict) -> String {
    let names: Vec<&str> = verdict
        .denied_scopes
        .iter()
        .map(|scope| match scope {
            Scope::User => "this user's",
            Scope::Device => "a device's",
            Scope::Ip => "this client address's",
        })
        .collect();
    let which = names.join(" and ");
    if verdict.exceeds_burst {
        format!("the batch holds more events than {which} limit allows at once; split it")
    } else {
        format!("{which} event rate limit is exhausted; retry after the advertised delay")
    }
}
