//! `cdcsync check`: the preflight report an operator runs before starting the pipeline.

use std::time::Duration;

use cdc_config::KafkaConfig;
use cdc_telemetry::CheckReport;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::config::Config;

/// Runs every check the configuration allows and prints one line per check (with the fix under a
/// failing one). Returns whether all required checks passed.
pub async fn run(config: &Config) -> bool {
    let mut reports = Vec::new();
    if let Some(source) = &config.source {
        reports.extend(binlog_reader::preflight::check_source(source).await.reports);
    }
    reports.push(check_kafka(&config.kafka).await);
    if let Some(warehouse) = &config.warehouse {
        reports.extend(warehouse_applier::preflight::check_warehouse(warehouse).await);
    }
    for r in &reports {
        println!("{r}");
    }
    let failed = reports.iter().filter(|r| r.is_failure()).count();
    if failed == 0 {
        println!("all {} checks passed", reports.len());
    } else {
        println!("{failed} of {} checks failed", reports.len());
    }
    failed == 0
}

/// Kafka is reachable: fetch the cluster metadata within a timeout.
async fn check_kafka(kafka: &KafkaConfig) -> CheckReport {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = match cc.create() {
        Ok(c) => c,
        Err(e) => return CheckReport::fail("kafka", e.to_string(), "fix kafka.properties"),
    };
    let result = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.brokers().len())
    })
    .await;
    match result {
        Ok(Ok(n)) => CheckReport::pass(
            "kafka",
            format!("{n} broker(s) at {}", kafka.bootstrap_servers),
        ),
        Ok(Err(e)) => CheckReport::fail(
            "kafka",
            format!("{}: {e}", kafka.bootstrap_servers),
            "check that the brokers run and kafka.bootstrap_servers points at them",
        ),
        Err(e) => CheckReport::fail("kafka", e.to_string(), "internal error"),
    }
}
