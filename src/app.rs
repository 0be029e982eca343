//! Start-up and shutdown of the whole service: [`Application::build`] connects the store,
//! starts the supervision tree, builds the HTTP application and binds (port 0 works), and
//! [`Application::run_until_stopped`] serves until a shutdown signal or an escalation.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::breaker::BreakerConfig;
use actors::bridge::{BridgeConfig, BridgeHandle};
use actors::config_cache::{
    BridgeConfigSource, ConfigCacheArgs, DbSnapshotStore, Freshness, CONFIG_SNAPSHOT_NAME,
};
use actors::supervisor::{ChildSpec, Supervisor, SupervisorHandle, SupervisorHealth};
use anyhow::Context;
use poem::listener::{Acceptor, AcceptorExt, Listener, TcpListener};
use poem::Server;
use sea_orm::DatabaseConnection;

use crate::abuse::{AbuseControls, RateLimitProbe};
use crate::auth::AuthService;
use crate::background::Background;
use crate::http::auth::AuthApi;
use crate::http::config::ConfigApi;
use crate::http::docs::{DocsApi, RenderedDocs};
use crate::http::events::EventsApi;
use crate::http::health::HealthApi;
use crate::http::meta::MetaApi;
use crate::http::preferences::PreferencesApi;
use crate::http::security::SharedAuthenticator;
use crate::identity::Identity;
use crate::readiness::Readiness;
use crate::settings::Settings;
use crate::{store, telemetry};

/// Parts of the application a caller may supply instead of the ones built from settings.
#[derive(Default)]
pub struct Overrides {
    /// Judges bearer tokens instead of the configured authenticator.
    pub authenticator: Option<SharedAuthenticator>,
    /// Extra supervised children after the service's own (tests use it to put a
    /// misbehaving actor under the real supervisor).
    pub extra_children: Vec<ChildSpec>,
}

/// How the service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// A shutdown signal: exit 0.
    Stopped,
    /// The supervision tree escalated: exit non-zero so that Kubernetes restarts the pod.
    Escalated,
}

/// How long an escalated service keeps answering `/health/live` 503 before it exits, so
/// that probes and operators can see why it is going away.
const ESCALATION_LINGER: Duration = Duration::from_millis(500);

pub struct Application {
    settings: Arc<Settings>,
    acceptor: poem::listener::BoxAcceptor,
    local_addr: SocketAddr,
    endpoint: poem::endpoint::BoxEndpoint<'static>,
    supervisor: SupervisorHandle,
    tree: SupervisorHealth,
    db: DatabaseConnection,
    abuse: AbuseControls,
    /// The event path's background runtime; dropped last (after the actors stopped).
    background: Background,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Overrides::default()).await
    }

    /// [`Application::build`] with parts replaced or added (what the integration tests and
    /// the benchmark use).
    pub async fn build_with(settings: Settings, overrides: Overrides) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let db = store::connect(&settings)
            .await
            .context("the durable store (DATABASE_URL) is unreachable")?;

        // The bridge to .NET: every call to .NET goes through it (contract section 9).
        let (bridge_spec, bridge) = actors::bridge::child_spec(bridge_config(&settings))
            .context("DOTNET_BASE_URL is not a usable URL")?;
        // The config cache (contract 7), after the bridge it fetches through.
        let (config_spec, config_cache) =
            actors::config_cache::child_spec(config_cache_args(&settings, &db, &bridge));
        let background = Background::start(settings.events.pipeline_nice)
            .context("cannot start the background runtime")?;
        let events = crate::events::build(&settings, &db, &background).await?;
        // The abuse controls of /events: the limiter, and the backpressure controller
        // watching the aggregator's lag (on the event path's JetStream) and the outbox.
        let (abuse, controller) = crate::abuse::build(
            &settings,
            events.jetstream.clone(),
            Arc::new(events.backlog.clone()),
        )
        .await?;

        let mut tree_builder = Supervisor::builder()
            .intensity(settings.supervisor.max_restarts, settings.supervisor.window)
            .child(bridge_spec)
            .child(config_spec)
            .child(controller);
        for child in events.children.into_iter().chain(overrides.extra_children) {
            tree_builder = tree_builder.child(child);
        }
        let (supervisor, tree) = tree_builder
            .start()
            .await
            .context("the supervision tree failed to start")?;
        let actor_names: Vec<String> = tree
            .children_status()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let metrics = telemetry::metrics_handle();
        actors::metric_names::register_all(&actor_names, &settings.backpressure.consumers);

        let mut readiness = Readiness::default();
        readiness.add(Arc::new(StoreProbe { db: db.clone() }));
        readiness.add(events.probe);
        readiness.add(Arc::new(RateLimitProbe {
            limiter: abuse.limiter.clone(),
            redis_configured: settings.redis_url.is_some(),
        }));

        // Who the caller is (contract 3.5), for every route with the bearer scheme.
        let authenticator = overrides
            .authenticator
            .unwrap_or_else(|| Identity::new(settings.jwt.as_ref(), bridge.clone()).shared());

        let docs = RenderedDocs::default();
        let apis = (
            AuthApi {
                service: Arc::new(AuthService::new(bridge.clone(), settings.enforce_admin_mfa)),
            },
            MetaApi,
            HealthApi {
                tree: tree.clone(),
                readiness: Arc::new(readiness),
                metrics,
            },
            DocsApi { docs: docs.clone() },
            EventsApi {
                ingest: events.ingest,
                abuse: abuse.clone(),
            },
            ConfigApi {
                cache: config_cache.clone(),
                ttl: settings.config_cache.ttl,
            },
            PreferencesApi {
                cache: config_cache,
                bridge: bridge.clone(),
            },
        );
        let max_body = settings.events.max_body_bytes.max(64 * 1024);
        let endpoint = crate::http::build(
            apis,
            docs,
            settings.trusted_proxies.clone(),
            max_body,
            authenticator,
        );

        let acceptor = TcpListener::bind(settings.bind)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {}", settings.bind))?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("the listener has no socket address")?;
        Ok(Application {
            settings,
            acceptor: acceptor.boxed(),
            local_addr,
            endpoint: poem::EndpointExt::boxed(endpoint),
            supervisor,
            tree,
            db,
            abuse,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn tree(&self) -> SupervisorHealth {
        self.tree.clone()
    }

    /// The rate limiter and backpressure signal `/events` consults.
    pub fn abuse_controls(&self) -> AbuseControls {
        self.abuse.clone()
    }

    /// Serves until `shutdown` resolves (exit 0) or the tree escalates (exit non-zero).
    /// Either way: stop accepting, finish in-flight requests within the grace period, then
    /// stop the actors (which flush what they hold) and close the store.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<ExitReason> {
        let grace = self.settings.shutdown_grace;
        let tree = self.tree.clone();
        let (reason_tx, reason_rx) = tokio::sync::oneshot::channel();
        let signal = async move {
            let reason = tokio::select! {
                _ = shutdown => ExitReason::Stopped,
                _ = tree.escalated() => {
                    tracing::error!("supervision tree escalated: exiting non-zero");
                    tokio::time::sleep(ESCALATION_LINGER).await;
                    ExitReason::Escalated
                }
            };
            tracing::info!(
                ?reason,
                "shutting down: no new connections, finishing in-flight requests"
            );
            let _ = reason_tx.send(reason);
        };
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(self.endpoint, signal, Some(grace))
            .await
            .context("the HTTP server failed")?;
        let reason = reason_rx.await.unwrap_or(ExitReason::Stopped);
        if let Err(err) = self.supervisor.shutdown(grace).await {
            tracing::warn!(error = %err, "the actor tree did not stop cleanly");
        }
        self.abuse.limiter.close().await;
        let _ = self.db.close().await;
        drop(self.background);
        tracing::info!(?reason, "stopped");
        Ok(reason)
    }
}

/// The bridge's settings: `DOTNET_*` and the `CIRCUIT_*` thresholds.
fn bridge_config(settings: &Settings) -> BridgeConfig {
    let c = &settings.circuit;
    BridgeConfig {
        base_url: settings.dotnet.base_url.clone(),
        timeout: settings.dotnet.timeout,
        breaker: BreakerConfig {
            failure_rate_pct: c.failure_rate_pct,
            min_calls: c.min_calls,
            window: c.window,
            open_for: c.open_for,
            half_open_probes: c.half_open_probes,
            slow_call: settings.dotnet.slow_call,
            slow_call_rate_pct: c.slow_call_rate_pct,
            call_timeout: settings.dotnet.timeout,
        },
    }
}

/// The config cache's settings: `CONFIG_*`, fetching through the bridge, keeping its copy in
/// the durable store.
fn config_cache_args(
    settings: &Settings,
    db: &DatabaseConnection,
    bridge: &BridgeHandle,
) -> ConfigCacheArgs {
    ConfigCacheArgs {
        source: Arc::new(BridgeConfigSource::new(bridge.clone())),
        store: Arc::new(DbSnapshotStore::new(db.clone(), CONFIG_SNAPSHOT_NAME)),
        freshness: Freshness {
            ttl: settings.config_cache.ttl,
            max_stale: settings.config_cache.max_stale,
        },
        // A backstop only: the bridge bounds each attempt by DOTNET_TIMEOUT_SECONDS and
        // makes at most three, with at most 2 s of backoff between them.
        fetch_timeout: settings.dotnet.timeout * 3 + Duration::from_secs(2),
    }
}

/// Ready when the durable store answers.
struct StoreProbe {
    db: DatabaseConnection,
}

impl crate::readiness::ReadinessProbe for StoreProbe {
    fn check(&self) -> futures::future::BoxFuture<'_, Vec<crate::readiness::ProbeReport>> {
        Box::pin(async move {
            let ready = store::ping(&self.db).await;
            vec![crate::readiness::ProbeReport {
                name: "store".into(),
                ready,
                detail: (!ready).then(|| "the durable store does not answer".into()),
            }]
        })
    }
}
