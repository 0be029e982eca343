//! Load generator and backend-ceiling benchmarks for the sidecar (see `BENCHMARKS.md`).
//!
//! - `auth`: login + refresh through the sidecar against the same calls made directly to
//!   the .NET emulator, with the same load loop, in the same run.

mod auth;
mod load;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench", about = "Benchmarks for the sidecar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Login + refresh through the sidecar vs. directly against the .NET emulator.
    Auth(auth::AuthArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Auth(args) => auth::run(args).await,
    }
}
