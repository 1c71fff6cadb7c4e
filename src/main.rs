//! `switchboard`: one binary for every role, and the tools that go with
//! them. Parses the command line, sets up logging, and hands over to the
//! role or the tool.

use clap::Parser;
use switchboard::{Cli, Command, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Role(role) => {
            let _telemetry = telemetry::init(&role.process().log, role.name())?;
            Box::pin(switchboard::serve(role)).await
        }
        Command::Tool(tool) => {
            let _telemetry = telemetry::init_tool()?;
            tool.run().await
        }
    }
}
