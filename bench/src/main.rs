//! Load generator and backend-ceiling benchmarks for the sidecar (see BENCHMARKS.md).
//! One subcommand per benchmark; each lives in its own module.

use clap::{Parser, Subcommand};

mod ingest;

#[derive(Parser)]
#[command(about = "Benchmarks of the sidecar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /events throughput and latency, with the raw PostgreSQL and JetStream ceilings.
    Ingest(ingest::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Ingest(args) => runtime.block_on(ingest::run(args)),
    }
}
