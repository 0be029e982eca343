//! Readiness probes: each dependency or subsystem that can make the service not ready
//! registers a probe; `/health/ready` runs them all and names what is not ready.

use std::sync::Arc;

use futures::future::BoxFuture;

/// What one probe found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub ready: bool,
    /// Why not ready, or a note an operator should see even when ready (e.g. "publishing is
    /// off: NATS_URL is unset").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A readiness check. Implementations must bound their own time (a probe that hangs would
/// hang the readiness route).
pub trait ReadinessProbe: Send + Sync {
    fn check(&self) -> BoxFuture<'_, Vec<ProbeReport>>;
}

/// All probes of one application.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<Arc<dyn ReadinessProbe>>,
}

impl Readiness {
    pub fn add(&mut self, probe: Arc<dyn ReadinessProbe>) {
        self.probes.push(probe);
    }

    pub async fn run(&self) -> Vec<ProbeReport> {
        let reports = futures::future::join_all(self.probes.iter().map(|p| p.check())).await;
        reports.into_iter().flatten().collect()
    }
}
