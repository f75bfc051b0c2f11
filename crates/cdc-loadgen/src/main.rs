//! `cdc-loadgen`: the order workload generator as a stand-alone binary (the same arguments as
//! `cdcsync loadgen`).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "cdc-loadgen",
    version,
    about = "Drive an order workload against a MySQL/MariaDB source"
)]
struct Cli {
    #[command(flatten)]
    args: cdc_loadgen::cli::LoadgenArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cdc_loadgen::cli::run(cli.args).await?;
    Ok(())
}
