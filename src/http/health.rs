//! `GET /health/live`, `GET /health/ready` and `GET /metrics` (contract section 10).

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::http::problem::ProblemResponse;
use crate::http::ApiTags;
use crate::readiness::Readiness;
use actors::supervisor::SupervisorHealth;

/// Liveness: whether the supervision tree still runs.
#[derive(Object)]
pub struct Liveness {
    /// `live`, or `escalated` once a child restarted more often than its intensity allows.
    status: String,
}

/// One check of the readiness report.
#[derive(Object)]
pub struct Check {
    name: String,
    ready: bool,
    #[oai(skip_serializing_if_is_none)]
    detail: Option<String>,
}

/// The readiness report: every check, and the names of those not ready.
#[derive(Object)]
pub struct ReadinessReport {
    /// `ready` or `not_ready`.
    status: String,
    /// Names of the checks that are not ready (empty when ready).
    #[oai(rename = "notReady")]
    not_ready: Vec<String>,
    checks: Vec<Check>,
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
pub enum LiveResponse {
    /// The supervision tree runs.
    #[oai(status = 200)]
    Live(Json<Liveness>),
    /// The tree escalated; the process is exiting non-zero so that Kubernetes restarts it.
    #[oai(status = 503)]
    Escalated(Json<Liveness>),
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
pub enum ReadyResponse {
    /// The durable store answers and every actor is up.
    #[oai(status = 200)]
    Ready(Json<ReadinessReport>),
    /// Something is not ready; `notReady` names it.
    #[oai(status = 503)]
    NotReady(Json<ReadinessReport>),
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
pub enum MetricsResponse {
    /// Prometheus text exposition format.
    #[oai(status = 200)]
    Ok(PlainText<String>),
}

pub struct HealthApi {
    pub tree: SupervisorHealth,
    pub readiness: Arc<Readiness>,
    pub metrics: PrometheusHandle,
}

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness: 200 while the supervision tree runs, 503 once it has escalated.
    #[oai(path = "/health/live", method = "get", operation_id = "getLive")]
    async fn live(&self) -> Result<LiveResponse, ProblemResponse> {
        Ok(if self.tree.is_escalated() {
            LiveResponse::Escalated(Json(Liveness {
                status: "escalated".into(),
            }))
        } else {
            LiveResponse::Live(Json(Liveness {
                status: "live".into(),
            }))
        })
    }

    /// Readiness: 200 when the durable store answers and every actor is up; otherwise 503
    /// with a body naming what is not ready.
    #[oai(path = "/health/ready", method = "get", operation_id = "getReady")]
    async fn ready(&self) -> Result<ReadyResponse, ProblemResponse> {
        let mut checks: Vec<Check> = self
            .tree
            .children_status()
            .into_iter()
            .map(|(name, status)| {
                let ready = status.is_up();
                Check {
                    name: format!("actor:{name}"),
                    ready,
                    detail: (!ready).then(|| format!("{status:?}")),
                }
            })
            .collect();
        if self.tree.is_escalated() {
            checks.push(Check {
                name: "supervisor".into(),
                ready: false,
                detail: Some("escalated".into()),
            });
        }
        checks.extend(self.readiness.run().await.into_iter().map(|r| Check {
            name: r.name,
            ready: r.ready,
            detail: r.detail,
        }));
        let not_ready: Vec<String> = checks
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.clone())
            .collect();
        let report = |status: &str| ReadinessReport {
            status: status.into(),
            not_ready: not_ready.clone(),
            checks: Vec::new(),
        };
        Ok(if not_ready.is_empty() {
            ReadyResponse::Ready(Json(ReadinessReport {
                checks,
                ..report("ready")
            }))
        } else {
            ReadyResponse::NotReady(Json(ReadinessReport {
                checks,
                ..report("not_ready")
            }))
        })
    }

    /// Prometheus metrics. Every series the contract names exists from start-up.
    #[oai(path = "/metrics", method = "get", operation_id = "getMetrics")]
    async fn metrics(&self) -> Result<MetricsResponse, ProblemResponse> {
        Ok(MetricsResponse::Ok(PlainText(self.metrics.render())))
    }
}
