//! The sidecar as the binary builds it, in this process, on the embedded SQLite store (a
//! fresh file in a temp dir), in front of a given .NET: what `bench auth` and `bench config`
//! measure against calling that .NET directly.

use anyhow::Context;
use sidecar::app::Application;

/// Builds (does not yet serve) the sidecar on `127.0.0.1:<free port>`; returns it and its
/// temp dir (named after `tag`), for the caller to remove when done.
pub async fn sidecar_in_front_of(
    dotnet_url: &str,
    tag: &str,
) -> anyhow::Result<(Application, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("sidecar-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let env: std::collections::HashMap<String, String> = [
        ("SIDECAR_BIND", "127.0.0.1:0".to_owned()),
        ("APP_ENV", "prod".to_owned()),
        ("DOTNET_BASE_URL", dotnet_url.to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/bench.db?mode=rwc", dir.display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = sidecar::settings::Settings::from_map(&env)?;
    let app = Application::build(settings)
        .await
        .context("the sidecar starts")?;
    Ok((app, dir))
}
