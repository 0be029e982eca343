//! The `sidecar` binary: load settings, set up telemetry, build the application, serve until
//! SIGTERM/SIGINT (exit 0) or a supervisor escalation (exit 1).

use sidecar::app::{Application, ExitReason};
use sidecar::settings::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A `.env` in the working directory is read too (contract section 11); real environment
    // variables win over it.
    let _ = dotenvy::dotenv();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sidecar: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    sidecar::telemetry::init_logs(settings.app_env, std::io::stdout);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "start-up failed");
            return std::process::ExitCode::from(3);
        }
    };
    tracing::info!(addr = %app.local_addr(), "sidecar listening");
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(ExitReason::Stopped) => std::process::ExitCode::SUCCESS,
        Ok(ExitReason::Escalated) => std::process::ExitCode::from(1),
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "the service failed");
            std::process::ExitCode::from(1)
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
