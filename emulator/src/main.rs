//! `dotnet-emulator`: the emulator as a standalone server for local development.
//!
//! `cargo run -p emulator -- --bind 127.0.0.1:5000 [--issuer URL] [--audience NAME]`
//! Logs one line per request (method, path, status, time; never a body, token or password).
//! Control it through `/__emulator/...` (see the `control` module).

use std::net::SocketAddr;

use clap::Parser;
use emulator::{Emulator, EmulatorConfig, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

#[derive(Parser, Debug)]
#[command(
    name = "dotnet-emulator",
    about = "Emulates the .NET backend of the sidecar contract"
)]
struct Args {
    /// Listen address.
    #[arg(long, env = "EMULATOR_BIND", default_value = "127.0.0.1:5000")]
    bind: SocketAddr,
    /// `iss` of issued access tokens.
    #[arg(long, env = "EMULATOR_ISSUER", default_value = DEFAULT_ISSUER)]
    issuer: String,
    /// `aud` of issued access tokens.
    #[arg(long, env = "EMULATOR_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    audience: String,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 600)]
    access_ttl: i64,
    /// Start with no users.
    #[arg(long)]
    no_seed: bool,
    /// Let the preference routes through without a Bearer token.
    #[arg(long)]
    no_preferences_auth: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,poem=warn".into()),
        )
        .init();
    let args = Args::parse();
    let handle = Emulator::start(EmulatorConfig {
        bind: args.bind,
        issuer: args.issuer,
        audience: args.audience,
        access_ttl_secs: args.access_ttl,
        seed_users: !args.no_seed,
        require_auth_for_preferences: !args.no_preferences_auth,
        ..EmulatorConfig::default()
    })
    .await?;
    let users: Vec<String> = handle_users(&handle);
    tracing::info!(
        base_url = %handle.base_url(),
        issuer = handle.issuer(),
        audience = handle.audience(),
        users = %users.join(", "),
        "ready; seeded users' password is in emulator/README.md"
    );
    shutdown_signal().await?;
    tracing::info!("stopping");
    handle.stop().await;
    Ok(())
}

fn handle_users(handle: &emulator::EmulatorHandle) -> Vec<String> {
    emulator::seeded_users()
        .into_iter()
        .filter_map(|u| handle.user(&u.email))
        .map(|u| u.email)
        .collect()
}

/// Ctrl-C, or SIGTERM (a container runtime's stop).
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
