//! `GET /config` (contract section 7.1): the config .NET serves, from the `ConfigCache`
//! actor, with a strong `ETag`, `304 Not Modified` on a matching `If-None-Match`,
//! `Cache-Control: private, max-age=<ttl>`, and `X-Config-Stale: true` when .NET could not
//! confirm the copy.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use actors::bridge::request::whole_seconds;
use actors::config_cache::{
    CacheResult, ConfigCacheHandle, ConfigDocument, ConfigError, REQUIRED_MEMBERS,
};
use actors::metric_names::CONFIG_CACHE_TOTAL;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, OpenApi};

use crate::http::problem::{Problem, ProblemResponse};
use crate::http::ApiTags;

/// The config object, passed through from .NET as it is.
pub struct ConfigBody(pub Arc<ConfigDocument>);

impl Type for ConfigBody {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "Config".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(Self::name().into_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(Self::name().into_owned(), |_| {
            let object = |description: &'static str| {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some(description),
                    additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(
                        MetaSchema::ANY,
                    )))),
                    ..MetaSchema::new("object")
                }))
            };
            MetaSchema {
                description: Some(
                    "The configuration .NET serves, passed through unchanged: any other \
                     top-level member .NET adds is passed on too and is part of the ETag.",
                ),
                required: REQUIRED_MEMBERS.to_vec(),
                properties: vec![
                    (
                        "policy",
                        object(
                            "Server policy. `enforced`, when present, is an object of the \
                             preferences' shape whose values always win.",
                        ),
                    ),
                    ("featureFlags", object("Feature flags.")),
                    (
                        "notificationDefaults",
                        object("Defaults of the preferences' `notifications` member."),
                    ),
                ],
                additional_properties: Some(Box::new(MetaSchemaRef::Inline(Box::new(
                    MetaSchema::ANY,
                )))),
                ..MetaSchema::new("object")
            }
        });
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for ConfigBody {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(self.0.body().clone())
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
pub enum ConfigResponse {
    /// The current config.
    #[oai(status = 200)]
    Ok(
        Json<ConfigBody>,
        /// Strong entity tag: `"` + the first 32 hex characters of SHA-256 over the RFC 8785
        /// canonical JSON of the whole config object + `"`.
        #[oai(header = "ETag")]
        String,
        /// `private, max-age=<CONFIG_TTL_SECONDS>` (whole seconds, rounded down).
        #[oai(header = "Cache-Control")]
        String,
        /// Present, `true`, when .NET could not confirm this copy: it is the last good config
        /// (served for up to `CONFIG_MAX_STALE_SECONDS` past its TTL), or a copy from the
        /// durable store not yet confirmed since this replica started.
        #[oai(header = "X-Config-Stale")]
        Option<String>,
    ),
    /// `If-None-Match` matched the current config's ETag (or was `*`): no body.
    #[oai(status = 304)]
    NotModified(
        /// The current config's ETag.
        #[oai(header = "ETag")]
        String,
        /// As on 200.
        #[oai(header = "Cache-Control")]
        String,
        /// As on 200.
        #[oai(header = "X-Config-Stale")]
        Option<String>,
    ),
}

/// `GET /config`.
pub struct ConfigApi {
    pub cache: ConfigCacheHandle,
    /// `CONFIG_TTL_SECONDS`, for `Cache-Control`.
    pub ttl: Duration,
}

#[OpenApi(tag = "ApiTags::Config")]
impl ConfigApi {
    /// The configuration from .NET, cached (public).
    ///
    /// Served from a cache refreshed after `CONFIG_TTL_SECONDS`, one request to .NET at a
    /// time. While .NET is unreachable the last good config is served with
    /// `X-Config-Stale: true`, for up to `CONFIG_MAX_STALE_SECONDS` past its TTL; with no
    /// good copy at all the answer is 503 `upstream_unavailable`.
    #[oai(path = "/config", method = "get", operation_id = "getConfig")]
    async fn get_config(
        &self,
        /// Entity tags the client holds (a comma list, `W/` prefixes allowed and ignored,
        /// or `*`); a match answers 304 with no body.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<Vec<String>>>,
    ) -> Result<ConfigResponse, ProblemResponse> {
        let answer = match self.cache.get().await {
            Ok(answer) => answer,
            Err(error) => {
                metrics::counter!(CONFIG_CACHE_TOTAL, "result" => CacheResult::Miss.as_str())
                    .increment(1);
                return Err(problem_for(&error).into());
            }
        };
        metrics::counter!(CONFIG_CACHE_TOTAL, "result" => answer.result.as_str()).increment(1);
        let etag = answer.document.etag().to_owned();
        let cache_control = format!("private, max-age={}", self.ttl.as_secs());
        let stale = answer.stale.then(|| "true".to_owned());
        let lines = if_none_match.0.unwrap_or_default();
        if if_none_match_matches(&lines, &etag) {
            return Ok(ConfigResponse::NotModified(etag, cache_control, stale));
        }
        Ok(ConfigResponse::Ok(
            Json(ConfigBody(answer.document)),
            etag,
            cache_control,
            stale,
        ))
    }
}

/// The problem for a cache that has nothing to serve.
pub fn problem_for(error: &ConfigError) -> Problem {
    match error {
        ConfigError::Unavailable { retry_after } => Problem::upstream_unavailable(
            "the .NET backend is unavailable and no good config is held",
            whole_seconds(*retry_after),
        ),
        ConfigError::BadUpstream => Problem::upstream_error(
            "the .NET backend answered something that is not a config, and no good config is held",
        ),
    }
}

/// Whether `If-None-Match` (all its header lines) matches `etag` (RFC 9110 section 13.1.2):
/// `*` matches any current config; otherwise entity tags are compared weakly, so `W/`
/// prefixes on either side are ignored. Entity tags are parsed as quoted strings, so a comma
/// inside one does not split it; a malformed member is skipped up to the next comma.
pub fn if_none_match_matches(lines: &[String], etag: &str) -> bool {
    let ours = opaque(etag);
    lines.iter().any(|line| {
        let mut rest = line.as_str();
        loop {
            rest = rest.trim_start_matches([',', ' ', '\t']);
            if rest.is_empty() {
                return false;
            }
            if let Some(after) = rest.strip_prefix('*') {
                if after.trim_start().is_empty() || after.trim_start().starts_with(',') {
                    return true;
                }
            }
            let tag = rest.strip_prefix("W/").unwrap_or(rest);
            if let Some(body) = tag.strip_prefix('"') {
                if let Some(end) = body.find('"') {
                    if body[..end] == *ours {
                        return true;
                    }
                    rest = &body[end + 1..];
                    continue;
                }
            }
            // Not an entity tag: skip this member.
            match rest.find(',') {
                Some(comma) => rest = &rest[comma + 1..],
                None => return false,
            }
        }
    })
}

/// The opaque part of an entity tag (`W/"x"` and `"x"` are both `x`).
fn opaque(etag: &str) -> &str {
    let tag = etag.strip_prefix("W/").unwrap_or(etag);
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"0123456789abcdef0123456789abcdef\"";

    fn matches(lines: &[&str]) -> bool {
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        if_none_match_matches(&lines, TAG)
    }

    #[test]
    fn exact_weak_lists_and_star_match() {
        assert!(matches(&[TAG]));
        assert!(matches(&["W/\"0123456789abcdef0123456789abcdef\""]));
        assert!(matches(&[&format!("\"other\", {TAG}")]));
        assert!(matches(&[&format!("W/\"a\",W/\"b\" ,  {TAG} ")]));
        assert!(matches(&["\"other\"", TAG]), "several header lines");
        assert!(matches(&["*"]));
        assert!(matches(&[" * "]));
    }

    #[test]
    fn others_do_not_match() {
        assert!(!matches(&[]));
        assert!(!matches(&[""]));
        assert!(!matches(&["\"other\""]));
        assert!(!matches(&["0123456789abcdef0123456789abcdef"]), "unquoted");
        assert!(!matches(&["\"0123456789abcdef0123456789abcde\""]), "prefix");
        assert!(
            !matches(&["\"a,0123456789abcdef0123456789abcdef\""]),
            "comma inside a tag"
        );
        assert!(!matches(&["*x"]));
    }

    #[test]
    fn malformed_members_are_skipped() {
        assert!(matches(&[&format!("garbage, {TAG}")]));
        assert!(
            !matches(&[&format!("\"unterminated, {TAG}")]),
            "the quotes pair up differently"
        );
        assert!(!matches(&["W/", "\""]));
    }
}
