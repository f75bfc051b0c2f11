//! A standalone reader process for tests and the benchmark: `binlog-reader <config.toml>`.
//!
//! It reads the `[source]`, `[kafka]` and `[reader]` sections of a cdcsync configuration file
//! (other sections are ignored), runs [`binlog_reader::run`] until SIGTERM/SIGINT, and exits 0
//! after a graceful stop, 1 with the error's message on a definite error. `cdcsync reader` is
//! the production entry point; this binary exists so that the crash tests can `kill -9` a real
//! reader process without depending on the rest of the binary.

use std::process::ExitCode;

use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    source: cdc_config::SourceConfig,
    kafka: cdc_config::KafkaConfig,
    #[serde(default)]
    reader: binlog_reader::ReaderConfig,
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: binlog-reader <config.toml>");
        return ExitCode::from(2);
    };
    cdc_telemetry::init_tracing(&cdc_config::TelemetryConfig::default());
    let file: File = match cdc_config::load(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let shutdown = cdc_telemetry::shutdown_signal();
        let health = cdc_telemetry::Health::new();
        match binlog_reader::run(&file.source, &file.kafka, &file.reader, health, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}
