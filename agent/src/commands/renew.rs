//! `lifeboat-agent renew`: renew the agent certificate now.

use lifeboat_common::clock::format_unix_ms;
use lifeboat_common::exit;

use super::{CmdResult, Failure, connect, load_config};
use crate::cli::Cli;
use crate::enroll::renew::renew;

pub async fn run(cli: &Cli) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    let remote = connect(&cfg).await?;
    let not_after = renew(&cfg.controller, &remote).await.map_err(|e| Failure {
        message: e.to_string(),
        code: e.exit_code(),
    })?;
    println!(
        "certificate {} renewed; valid until {}",
        cfg.controller.cert.display(),
        format_unix_ms(not_after)
    );
    Ok(exit::SUCCESS)
}
