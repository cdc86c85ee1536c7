//! `lifeboat-agent enroll --token-file FILE --dir DIR [--name NAME]`.

use lifeboat_common::clock::format_unix_ms;
use lifeboat_common::exit;

use super::{CmdResult, Failure};
use crate::cli::EnrollArgs;
use crate::enroll::EnrollError;
use crate::enroll::join::{enroll, read_token};

fn failure(e: &EnrollError) -> Failure {
    Failure {
        message: e.to_string(),
        code: e.exit_code(),
    }
}

pub async fn run(args: &EnrollArgs) -> CmdResult {
    let token = read_token(args.token_file.as_deref()).map_err(|e| failure(&e))?;
    let out = enroll(&token, &args.dir, args.name.as_deref())
        .await
        .map_err(|e| failure(&e))?;
    println!(
        "Enrolled as agent {} (dedup group {}); certificate valid until {}",
        out.agent_id,
        out.dedup_group,
        format_unix_ms(out.not_after_unix_ms)
    );
    if out.new_key {
        println!(
            "Created the private key {}/agent.key (mode 0600; it never leaves this VM)",
            args.dir.display()
        );
    }
    println!(
        "Next: copy the fleet master key to {}/master.key (chmod 600), edit the sources in {}, then:",
        args.dir.display(),
        out.config.display()
    );
    println!("  lifeboat-agent --config {} backup", out.config.display());
    Ok(exit::SUCCESS)
}
