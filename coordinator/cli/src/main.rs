//! `orch`: the fleet's command line.
//!
//! flags → logging → run one subcommand → exit code (0 ok, 1 error, 2 the task
//! ran but produced no primary answer, 64 bad usage).

mod bench;
mod cmd;
mod eval;
mod plot;
mod render;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orch_shared::config::{NatsArgs, parse_args};
use orch_shared::telemetry::{self, LogArgs};

#[derive(Parser, Debug)]
#[command(
    name = "orch",
    version,
    about = "Submit tasks to the orch fleet, watch them, run a local fleet, benchmark it."
)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a task and wait for its result (live per-phase progress).
    Submit(cmd::SubmitArgs),
    /// Show a stored result (optionally waiting for it).
    Result(cmd::ResultArgs),
    /// Show coordinator statistics (the seed's get_stats(), plus p50/p95/p99).
    Stats(cmd::JsonFlag),
    /// List live workers and coordinators (NATS micro discovery).
    Workers(cmd::WorkersArgs),
    /// Print task events: replay from the event stream, then follow.
    Events(cmd::EventsArgs),
    /// Run a local fleet: nats-server (if none is reachable), coordinator, four workers.
    Up(up::UpArgs),
    /// Run a labelled task set through the fleet: pass rate, calibration (ECE, Brier), latency.
    Eval(eval::EvalArgs),
    /// Benchmark the fleet with simulated workers against the raw NATS floor.
    Bench(bench::BenchArgs),
    /// Write the JSON Schemas of the public messages to a directory.
    Schemas(cmd::SchemasArgs),
}

#[global_allocator]
static ALLOC: orch_shared::Allocator = orch_shared::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_args();
    let quiet = LogArgs {
        level: cli.log.level.clone().replace("info", "warn"),
        ..cli.log.clone()
    };
    // The CLI's own output is its result; its log says only what went wrong
    // (`orch up` prints milestones itself and keeps the fleet's logs in files).
    let telemetry = telemetry::init("orch", &quiet);
    let result = match cli.command {
        Command::Submit(a) => cmd::submit(&cli.nats, a).await,
        Command::Result(a) => cmd::result(&cli.nats, a).await,
        Command::Stats(a) => cmd::stats(&cli.nats, a).await,
        Command::Workers(a) => cmd::workers(&cli.nats, a).await,
        Command::Events(a) => cmd::events(&cli.nats, a).await,
        Command::Up(a) => up::run(&cli.nats, a).await,
        Command::Eval(a) => eval::run(&cli.nats, a).await,
        Command::Bench(a) => bench::run(&cli.nats, a).await,
        Command::Schemas(a) => cmd::schemas(a),
    };
    telemetry.shutdown().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("orch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
