//! The binary's command line: every common flag documented; bad configuration
//! exits 64 listing every problem (the checks all four workers share).

#[path = "../../../tests/common/worker_cli.rs"]
#[macro_use]
mod worker_cli;

worker_cli_tests!(env!("CARGO_BIN_EXE_orch-web"));
