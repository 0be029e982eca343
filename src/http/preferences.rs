//! `GET` and `POST /user/preferences` (contract section 7.2): the caller's preferences as
//! .NET stores them, merged under the config's policy.
//!
//! The merge is the pure [`actors::merge`]; this module only gathers its three inputs (the
//! config from the cache, the user's object from .NET), checks a submitted object's bounds,
//! stores it at .NET as the user sent it, and shapes the answer. The effective object is
//! always computed, never stored as the user's.

use std::collections::BTreeMap;
use std::sync::Arc;

use actors::bridge::{BridgeHandle, Operation, UpstreamRequest};
use actors::config_cache::{ConfigAnswer, ConfigCacheHandle};
use actors::merge::{effective_preferences, validate_preferences, PreferenceError, MAX_BYTES};
use poem::http::Method;
use poem::web::Data;
use poem::{Request, RequestBody};
use poem_openapi::payload::{Json, ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{Map, Value};

use crate::http::config::problem_for;
use crate::http::context::RequestContext;
use crate::http::problem::{respond, Problem, ProblemResponse};
use crate::http::security::{BearerAuth, Caller};
use crate::http::ApiTags;

/// The effective preferences and what policy overrode.
#[derive(Object, Debug)]
pub struct PreferencesView {
    /// `notificationDefaults` under `notifications`, overlaid by the user's own object,
    /// overlaid by `policy.enforced` (objects merged key by key, anything else replaced).
    pub preferences: BTreeMap<String, Value>,
    /// Dotted paths where the user's value was replaced by policy (sorted; `.` and `\` inside
    /// a key escaped with `\`).
    pub overridden: Vec<String>,
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
pub enum PreferencesResponse {
    /// The effective preferences; `overridden` lists the paths where the user's own value
    /// (stored, for GET; submitted, for POST) gives way to policy.
    #[oai(status = 200)]
    Ok(Json<PreferencesView>),
}

/// The submitted preferences: the raw JSON text, so that its size is checked before it is
/// parsed (contract section 12).
pub struct PreferencesBody(pub Vec<u8>);

impl Payload for PreferencesBody {
    const CONTENT_TYPE: &'static str = "application/json";

    /// `application/json` or any `application/*+json`, parameters ignored.
    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some(
                "The user's own preferences: a JSON object, at most 16 KiB (413 \
                 `payload_too_large`, checked first) and nested at most 4 deep, the top-level \
                 object being depth 1 and every object or array adding a level (400 \
                 `invalid_request`). Stored at .NET exactly as sent.",
            ),
            additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(MetaSchema::ANY)))),
            ..MetaSchema::new("object")
        }))
    }
}

impl ParsePayload for PreferencesBody {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        // The conventions middleware has already bounded the body; the 16 KiB limit of this
        // route is checked by the handler, with its own problem.
        Ok(PreferencesBody(body.take()?.into_vec().await?))
    }
}

// The two-argument form: the one-argument arm recurses without `$crate::` and cannot be
// used from another crate.
poem_openapi::impl_apirequest_for_payload!(PreferencesBody,);

/// `GET` and `POST /user/preferences`.
pub struct PreferencesApi {
    pub cache: ConfigCacheHandle,
    pub bridge: BridgeHandle,
}

#[OpenApi(prefix_path = "/user/preferences", tag = "ApiTags::Config")]
impl PreferencesApi {
    /// The caller's effective preferences (Bearer).
    ///
    /// The user's saved object (none saved reads as `{}`) merged under the current config;
    /// `overridden` lists the saved values that policy replaces.
    #[oai(path = "/", method = "get", operation_id = "getPreferences")]
    async fn get_preferences(
        &self,
        auth: BearerAuth,
        ctx: Data<&Arc<RequestContext>>,
    ) -> Result<PreferencesResponse, ProblemResponse> {
        let caller = auth.0;
        let (stored, config) = tokio::join!(self.stored(&caller, &ctx), self.cache.get());
        let stored = stored.map_err(|p| respond(&ctx, p))?;
        let config = config.map_err(|e| respond(&ctx, problem_for(&e)))?;
        Ok(answer(&config, &stored))
    }

    /// Saves the caller's preferences (Bearer) and answers the effective ones.
    ///
    /// The submitted object is stored at .NET exactly as sent; the answer merges it under
    /// the current config, and `overridden` lists the submitted values that policy replaces
    /// (they are kept as the user's choice, but do not take effect while policy holds).
    #[oai(path = "/", method = "post", operation_id = "savePreferences")]
    async fn post_preferences(
        &self,
        auth: BearerAuth,
        ctx: Data<&Arc<RequestContext>>,
        body: PreferencesBody,
    ) -> Result<PreferencesResponse, ProblemResponse> {
        let caller = auth.0;
        let submitted = parse_submitted(&body.0).map_err(|r| respond(&ctx, r.into()))?;
        // The config first: if it cannot be had, nothing is saved, so a 503 never means
        // "saved, perhaps".
        let config = self
            .cache
            .get()
            .await
            .map_err(|e| respond(&ctx, problem_for(&e)))?;
        self.store(&caller, &ctx, &submitted)
            .await
            .map_err(|p| respond(&ctx, p))?;
        Ok(answer(&config, &submitted))
    }
}

impl PreferencesApi {
    /// The user's saved object at .NET; `{}` when none is saved (404).
    async fn stored(&self, caller: &Caller, ctx: &RequestContext) -> Result<Value, Problem> {
        let request = UpstreamRequest::get(Operation::PreferencesGet, preferences_path(caller))
            .bearer(&caller.token)
            .forward(ctx.forward_headers());
        let response = self
            .bridge
            .call(request)
            .await
            .map_err(|e| Problem::from_upstream(&e))?;
        match response.status {
            200 if response.body.is_object() => Ok(response.body),
            200 => Err(Problem::upstream_error(
                "the .NET backend's stored preferences are not a JSON object",
            )),
            404 => Ok(Value::Object(Map::new())),
            _ if response.is_client_error() => Err(Problem::from_upstream_rejection(&response)),
            status => Err(Problem::upstream_error(format!(
                "the .NET backend answered {status} to a preferences read"
            ))),
        }
    }

    /// Stores the user's object at .NET as it was submitted.
    async fn store(
        &self,
        caller: &Caller,
        ctx: &RequestContext,
        submitted: &Value,
    ) -> Result<(), Problem> {
        let request = UpstreamRequest::new(
            Operation::PreferencesPut,
            Method::PUT,
            preferences_path(caller),
        )
        .json(submitted.clone())
        .bearer(&caller.token)
        .forward(ctx.forward_headers());
        let response = self
            .bridge
            .call(request)
            .await
            .map_err(|e| Problem::from_upstream(&e))?;
        match response.status {
            // The contract: 204 or 200 (any body ignored).
            200..=299 => Ok(()),
            _ if response.is_client_error() => Err(Problem::from_upstream_rejection(&response)),
            status => Err(Problem::upstream_error(format!(
                "the .NET backend answered {status} to a preferences write"
            ))),
        }
    }
}

/// Why a submitted body is refused before anything is sent to .NET.
#[derive(Debug)]
enum Refused {
    /// Over the size limit, or not an object, or too deep.
    Preference(PreferenceError),
    /// Not JSON at all.
    NotJson,
}

impl From<Refused> for Problem {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Preference(error @ PreferenceError::TooLarge { .. }) => {
                Problem::payload_too_large(error.to_string())
            }
            Refused::Preference(error) => Problem::invalid_request(error.to_string()),
            Refused::NotJson => Problem::invalid_request("the body is not valid JSON"),
        }
    }
}

/// Size first (before looking at the text), then JSON, then shape and depth.
fn parse_submitted(raw: &[u8]) -> Result<Value, Refused> {
    if raw.len() > MAX_BYTES {
        return Err(Refused::Preference(PreferenceError::TooLarge {
            len: raw.len(),
            max: MAX_BYTES,
        }));
    }
    let value: Value = serde_json::from_slice(raw).map_err(|_| Refused::NotJson)?;
    validate_preferences(raw.len(), &value).map_err(Refused::Preference)?;
    Ok(value)
}

/// The effective preferences of `user` under `config`.
fn answer(config: &ConfigAnswer, user: &Value) -> PreferencesResponse {
    let document = &config.document;
    let merged = effective_preferences(document.notification_defaults(), user, document.enforced());
    let preferences = match merged.preferences {
        Value::Object(map) => map.into_iter().collect(),
        // `effective_preferences` always builds an object.
        _ => BTreeMap::new(),
    };
    PreferencesResponse::Ok(Json(PreferencesView {
        preferences,
        overridden: merged.overridden,
    }))
}

/// `/users/{id}/preferences`, the id percent-encoded as one path segment.
fn preferences_path(caller: &Caller) -> String {
    format!("/users/{}/preferences", path_segment(&caller.user_id))
}

/// Percent-encodes everything but RFC 3986 unreserved characters; `.` and `..` are encoded
/// too, so that no id can be a dot segment that a URL parser would resolve.
fn path_segment(raw: &str) -> String {
    if raw == "." || raw == ".." {
        return raw.replace('.', "%2E");
    }
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked_before_parsing() {
        let big = vec![b'x'; MAX_BYTES + 1];
        let problem = Problem::from(parse_submitted(&big).unwrap_err());
        assert_eq!(problem.code, "payload_too_large");
        assert_eq!(problem.status.as_u16(), 413);
    }

    #[test]
    fn bounds_and_shape_are_invalid_requests() {
        for bad in [
            &b"not json"[..],
            b"[1]",
            b"3",
            b"",
            br#"{"a":{"b":{"c":{"d":{}}}}}"#,
        ] {
            let problem = Problem::from(parse_submitted(bad).unwrap_err());
            assert_eq!(
                problem.code,
                "invalid_request",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_submitted(br#"{"a":{"b":{"c":{"d":1}}}}"#).is_ok());
        assert!(parse_submitted(br#"{"a":{"b":{"c":[1]}}}"#).is_ok());
        assert!(parse_submitted(br#"{"a":{"b":{"c":[[1]]}}}"#).is_err());
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        let filler = "x".repeat(MAX_BYTES - r#"{"k":""}"#.len());
        let body = format!(r#"{{"k":"{filler}"}}"#);
        assert_eq!(body.len(), MAX_BYTES);
        assert!(parse_submitted(body.as_bytes()).is_ok());
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(PreferencesBody::check_content_type(ok), "{ok}");
        }
        for bad in ["text/plain", "application/xml", "", "json"] {
            assert!(!PreferencesBody::check_content_type(bad), "{bad}");
        }
    }

    #[test]
    fn user_ids_are_one_path_segment() {
        assert_eq!(path_segment("3f2c-AB_x.y~"), "3f2c-AB_x.y~");
        assert_eq!(path_segment("../admin"), "..%2Fadmin");
        assert_eq!(path_segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(path_segment("é"), "%C3%A9");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("."), "%2E");
    }
}
