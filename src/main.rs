//! `switchboard`: one binary for every role. Parses the command line, sets
//! up logging, and hands over to the role.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = switchboard::Cli::parse();
    let output = if cli.role.is_tool() {
        switchboard::telemetry::LogOutput::Stderr
    } else {
        switchboard::telemetry::LogOutput::Stdout
    };
    let _telemetry = switchboard::telemetry::init(&cli.log, cli.role.name(), output)?;
    switchboard::run(cli).await
}
