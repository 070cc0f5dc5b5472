//! `orch-coordinator`: flags → telemetry → connect → serve until SIGTERM → drain → flush.

use std::process::ExitCode;
use std::sync::Arc;

use orch_coordinator::{Coordinator, CoordinatorArgs, serve};
use orch_shared::config::{EXIT_UNAVAILABLE, exit_config, parse_args};
use orch_shared::{shutdown, telemetry};

const NAME: &str = "orch-coordinator";

#[global_allocator]
static ALLOC: orch_shared::Allocator = orch_shared::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args: CoordinatorArgs = parse_args();
    let telemetry = telemetry::init(NAME, &args.log);
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => exit_config(NAME, &e),
    };
    let (client, health) = match args.nats.connect(NAME).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE as u8);
        }
    };
    let code = match Coordinator::start(client, config).await {
        Ok(coord) => {
            let coord = Arc::new(coord.with_health(health));
            match serve(coord, shutdown::on_signal()).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{NAME}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e @ orch_coordinator::service::ServeError::JetStream(_)) => {
            eprintln!("{NAME}: {e}");
            ExitCode::from(EXIT_UNAVAILABLE as u8)
        }
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
