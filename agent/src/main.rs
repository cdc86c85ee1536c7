//! `lifeboat-agent`: see `lifeboat-agent --help`.

use clap::Parser;
use lifeboat_agent::cli::{Cli, Command};
use lifeboat_agent::commands;

fn main() {
    lifeboat_agent::allocator::tune_and_reexec();
    lifeboat_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    lifeboat_common::telemetry::init("info", cli.log_json);
    let code = match &cli.command {
        Command::Init(args) => commands::init::run(args),
        Command::CpuCheck(args) => commands::cpu_check::run(args),
        other => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(dispatch(&cli, other)),
            Err(e) => Err(commands::Failure {
                message: format!("cannot start the async runtime: {e}"),
                code: lifeboat_common::exit::ERROR,
            }),
        },
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(f) => {
            eprintln!("error: {}", f.message);
            std::process::exit(f.code);
        }
    }
}

async fn dispatch(cli: &Cli, command: &Command) -> commands::CmdResult {
    match command {
        Command::Init(args) => commands::init::run(args),
        Command::CpuCheck(args) => commands::cpu_check::run(args),
        Command::Backup(args) => commands::backup::run(cli, args).await,
        Command::Run => commands::run::run(cli).await,
        Command::Snapshots(args) => commands::snapshots::run(cli, args).await,
        Command::Ls(args) => commands::ls::run(cli, args).await,
        Command::Restore(args) => commands::restore::run(cli, args).await,
        Command::Enroll(args) => commands::enroll::run(args).await,
        Command::Renew => commands::renew::run(cli).await,
        Command::Key(lifeboat_agent::cli::KeyCommand::Recover(args)) => {
            commands::key::recover(cli, args).await
        }
    }
}
