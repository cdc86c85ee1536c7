//! `lifeboatctl`: the admin CLI (see `lifeboat_controller::ctl`).

use std::process::ExitCode;

use clap::Parser;
use lifeboat_controller::ctl::{self, Cli};

fn main() -> ExitCode {
    lifeboat_common::tls::install_crypto_provider();
    lifeboat_common::telemetry::init("warn", false);
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(lifeboat_common::exit::ERROR as u8);
        }
    };
    match rt.block_on(ctl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(u8::try_from(f.code).unwrap_or(1))
        }
    }
}
