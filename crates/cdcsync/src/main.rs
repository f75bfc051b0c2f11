//! The `cdcsync` binary: loads configuration, sets up telemetry, and wires the components.
//! Logic lives in the library crates (see ARCHITECTURE.md).

mod check;
mod config;
mod daemon;
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
    /// Stream row changes from the source's binlog into Kafka (runs until SIGTERM).
    Reader {
        /// The configuration file.
        #[arg(long, short, env = "CDCSYNC_CONFIG")]
        config: String,
    },
    /// Apply change events from Kafka to the PostgreSQL warehouse (runs until SIGTERM).
    Applier {
        /// The configuration file.
        #[arg(long, short, env = "CDCSYNC_CONFIG")]
        config: String,
    },
    /// Compare source and warehouse; with --repair, re-emit differing rows through Kafka.
    /// Without --table: the scheduled mode, every `reconcile.interval_secs` (runs until SIGTERM).
    Reconcile {
        /// The configuration file.
        #[arg(long, short, env = "CDCSYNC_CONFIG")]
        config: String,
        /// The table to check once, as db.table.
        #[arg(long)]
        table: Option<String>,
        /// Emit fresh change events for every differing key (through Kafka, never directly).
        #[arg(long)]
        repair: bool,
        /// Write the differences as JSON lines to this file.
        #[arg(long)]
        report: Option<String>,
    },
    /// Ask the running reader to snapshot tables while it keeps streaming (via the Kafka control
    /// topic `<prefix>._signals`); with --wait, wait until they are done.
    Snapshot {
        /// The configuration file.
        #[arg(long, short, env = "CDCSYNC_CONFIG")]
        config: String,
        /// A captured table to snapshot, as db.table (repeatable).
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
        /// Wait until every table's snapshot is done (exit 1 if one fails), at most this many seconds.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Drive an order workload against the source (inserts, status changes, edits, deletes).
    Loadgen(cdc_loadgen::cli::LoadgenArgs),
    /// Live view of a running pipeline: rows/s captured and applied, backlog, end-to-end latency.
    Watch(watch::WatchArgs),
}

impl daemon::Definite for binlog_reader::ReaderError {
    fn is_definite(&self) -> bool {
        binlog_reader::ReaderError::is_definite(self)
    }
}

impl daemon::Definite for warehouse_applier::ApplierError {
    /// The applier retries transient failures itself; what reaches the top is definite.
    fn is_definite(&self) -> bool {
        true
    }
}

impl daemon::Definite for reconcile::ReconcileError {
    fn is_definite(&self) -> bool {
        reconcile::ReconcileError::is_definite(self)
    }
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
        Command::Reader { config } => {
            let config = Config::load(&config)?;
            cdc_telemetry::init_tracing(&config.telemetry);
            let source = config.source("reader")?.clone();
            let (kafka, reader) = (config.kafka.clone(), config.reader.clone());
            Ok(daemon::run(
                &config.telemetry,
                "reader",
                move |health, shutdown| async move {
                    binlog_reader::run(&source, &kafka, &reader, health, shutdown).await
                },
            )
            .await)
        }
        Command::Applier { config } => {
            let config = Config::load(&config)?;
            cdc_telemetry::init_tracing(&config.telemetry);
            let warehouse = config.warehouse("applier")?.clone();
            let name = config.topic_source_name()?.to_string();
            let (kafka, applier) = (config.kafka.clone(), config.applier.clone());
            Ok(daemon::run(
                &config.telemetry,
                "applier",
                move |health, shutdown| async move {
                    warehouse_applier::run(&kafka, &warehouse, &applier, &name, health, shutdown)
                        .await
                },
            )
            .await)
        }
        Command::Reconcile {
            config,
            table,
            repair,
            report,
        } => {
            let config = Config::load(&config)?;
            cdc_telemetry::init_tracing(&config.telemetry);
            let source = config.source("reconcile")?.clone();
            let warehouse = config.warehouse("reconcile")?.clone();
            let (kafka, mut rc) = (config.kafka.clone(), config.reconcile.clone());
            match table {
                Some(table) => {
                    let report = reconcile::run_once(
                        &source,
                        &warehouse,
                        &kafka,
                        &rc,
                        &table,
                        repair,
                        report.as_deref(),
                    )
                    .await?;
                    println!("{}", report.summary());
                    Ok(if report.is_clean() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    })
                }
                None => {
                    rc.repair |= repair;
                    Ok(daemon::run(
                        &config.telemetry,
                        "reconcile",
                        move |health, shutdown| async move {
                            health.set_ready(true);
                            // Liveness: the runtime is alive. A run that hangs is caught by the
                            // CdcsyncReconcileStale alert (last success stops moving).
                            let beat = shutdown.clone();
                            tokio::spawn(async move {
                                while !beat.is_cancelled() {
                                    health.beat();
                                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                                }
                            });
                            reconcile::run_scheduled(&source, &warehouse, &kafka, &rc, shutdown)
                                .await
                        },
                    )
                    .await)
                }
            }
        }
        Command::Snapshot {
            config,
            tables,
            wait,
        } => {
            let config = Config::load(&config)?;
            cdc_telemetry::init_tracing(&config.telemetry);
            let source = config.source("snapshot")?.clone();
            let (topic, since) =
                binlog_reader::snapshot::request_snapshot(&source, &config.kafka, &tables).await?;
            println!("snapshot of {} requested on {topic}", tables.join(", "));
            if let Some(secs) = wait {
                let cp_topic = config
                    .reader
                    .checkpoint_topic(config.kafka.prefix(&source.name));
                let done = binlog_reader::snapshot::wait_for_snapshots(
                    &config.kafka,
                    &cp_topic,
                    &source.name,
                    &tables,
                    since,
                    std::time::Duration::from_secs(secs),
                )
                .await?;
                for p in done {
                    println!("{}: done, {} rows in {} chunks", p.table, p.rows, p.chunks);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadgen(args) => {
            cdc_loadgen::cli::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch(args) => {
            watch::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
