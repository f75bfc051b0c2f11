//! The `cdcsync` binary: loads configuration, sets up telemetry, and wires the components.
//! Logic lives in the library crates (see ARCHITECTURE.md).

mod check;
mod config;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// cdcsync: change data capture from MySQL/MariaDB through Kafka into PostgreSQL.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the source, Kafka and the warehouse; one line per check, with a fix for each failure.
    Check {
        /// The configuration file.
        #[arg(long, short, env = "CDCSYNC_CONFIG")]
        config: String,
    },
    /// Live view of a running pipeline: rows/s captured and applied, backlog, end-to-end latency.
    Watch(watch::WatchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => {
            let config = Config::load(&config)?;
            cdc_telemetry::init_tracing(&config.telemetry);
            Ok(if check::run(&config).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Watch(args) => {
            watch::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
