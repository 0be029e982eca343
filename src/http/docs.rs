//! `GET /openapi.json` and `GET /docs`: the OpenAPI document (which describes these two
//! routes as well) and a Swagger UI that needs nothing from the network.

use std::sync::{Arc, OnceLock};

use poem_openapi::payload::{Html, Json};
use poem_openapi::{ApiResponse, OpenApi};

use crate::http::problem::ProblemResponse;
use crate::http::ApiTags;

/// The rendered document and UI, filled once the service is built (the document describes
/// the operation that serves it, so it can only be rendered after).
#[derive(Clone, Default)]
pub struct RenderedDocs {
    pub spec: Arc<OnceLock<serde_json::Value>>,
    pub ui: Arc<OnceLock<String>>,
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
pub enum SpecResponse {
    /// The OpenAPI 3 document.
    #[oai(status = 200)]
    Ok(Json<serde_json::Value>),
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
pub enum UiResponse {
    /// Swagger UI.
    #[oai(status = 200)]
    Ok(Html<String>),
}

pub struct DocsApi {
    pub docs: RenderedDocs,
}

#[OpenApi(tag = "ApiTags::Operations")]
impl DocsApi {
    /// This OpenAPI document.
    #[oai(path = "/openapi.json", method = "get", operation_id = "getOpenApi")]
    async fn spec(&self) -> Result<SpecResponse, ProblemResponse> {
        Ok(SpecResponse::Ok(Json(
            self.docs.spec.get().cloned().unwrap_or_default(),
        )))
    }

    /// A browsable UI of this document.
    #[oai(path = "/docs", method = "get", operation_id = "getDocs")]
    async fn ui(&self) -> Result<UiResponse, ProblemResponse> {
        Ok(UiResponse::Ok(Html(
            self.docs.ui.get().cloned().unwrap_or_default(),
        )))
    }
}
