//! Load generator and backend-ceiling benchmarks for the sidecar (see `BENCHMARKS.md`).
//! One subcommand per benchmark; each lives in its own module.
//!
//! - `auth`: login + refresh through the sidecar against the same calls made directly to
//!   the .NET emulator, with the same load loop, in the same run.
//! - `ingest`: POST /events throughput and latency, with the raw PostgreSQL and JetStream
//!   ceilings measured in the same run.
//! - `startup`: start-up time to ready and idle RSS of the release binary.
//! - `flood`: a well-behaved user's latency while another user floods `/events` at 10x
//!   its rate limit.
//! - `config`: `GET /config` through the sidecar with and without `If-None-Match`, against
//!   the emulator's own `/config`.
//!
//! Every subcommand takes `--json <PATH>` and writes there one JSON object with the figures
//! it prints (`report.rs`); `bench/run-all.sh` runs them all.

mod auth;
mod config;
mod embedded;
mod flood;
mod ingest;
mod load;
mod report;
mod startup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench", about = "Benchmarks of the sidecar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Login + refresh through the sidecar vs. directly against the .NET emulator.
    Auth(auth::AuthArgs),
    /// POST /events throughput and latency, with the raw PostgreSQL and JetStream ceilings.
    Ingest(ingest::Args),
    /// Start-up time to ready and idle memory of the release binary.
    Startup(startup::Args),
    /// A well-behaved user's p99 alone and while another user floods at 10x its limit.
    Flood(flood::Args),
    /// GET /config through the sidecar (200 and 304) vs. the emulator's own /config.
    Config(config::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Auth(args) => runtime.block_on(auth::run(args)),
        Command::Ingest(args) => runtime.block_on(ingest::run(args)),
        Command::Startup(args) => runtime.block_on(startup::run(args)),
        Command::Flood(args) => runtime.block_on(flood::run(args)),
        Command::Config(args) => runtime.block_on(config::run(args)),
    }
}
