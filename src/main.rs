//! `switchboard`: one binary for every role, and the tools that go with
//! them. Parses the command line, sets up logging, and hands over to the
//! role or the tool.

use clap::Parser;
use switchboard::{Cli, Command, telemetry};

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Role(role) = &command
        && let Some(threads) = role.process().worker_threads
    {
        runtime.worker_threads(threads.get());
    }
    runtime.build()?.block_on(async move {
        match command {
            Command::Role(role) => {
                let _telemetry = telemetry::init(&role.process().log, role.name())?;
                Box::pin(switchboard::serve(role)).await
            }
            Command::Tool(tool) => {
                let _telemetry = telemetry::init_tool()?;
                tool.run().await
            }
        }
    })
}
