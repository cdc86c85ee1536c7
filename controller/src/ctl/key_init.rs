//! `lifeboatctl key init --out FILE [--passphrase-file F | --no-escrow]`: creates the fleet
//! master key locally and, unless `--no-escrow` (an offline key ceremony), escrows it: the key is
//! wrapped under the operator's passphrase here and only the envelope goes to the controller
//! (trust invariants 1 and 4). The file is mode 0600 and never overwritten.
//!
//! Order: passphrase read and strength-checked first (a weak one writes and stores nothing), the
//! controller connection checked; then the key file is written (so the key is never lost), then
//! escrowed. If escrow fails after the file is written, the error says so and how to retry with
//! `key escrow --key FILE`.

use std::path::PathBuf;

use lifeboat_common::exit;
use lifeboat_common::keys::MasterKey;

use super::key_escrow::{escrow_master, sealing_passphrase};
use super::{Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the key (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Read the escrow passphrase from the first line of FILE instead of the terminal.
    #[arg(long, value_name = "FILE", conflicts_with = "no_escrow")]
    pub passphrase_file: Option<PathBuf>,
    /// Do not escrow the key (offline key ceremony; escrow later with `key escrow --key FILE`).
    #[arg(long)]
    pub no_escrow: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    if a.out.exists() {
        return Err(Failure::error(format!(
            "{} already exists; refusing to overwrite a key file (choose another --out)",
            a.out.display()
        )));
    }
    let pass = if a.no_escrow {
        None
    } else {
        Some(
            sealing_passphrase(a.passphrase_file.as_deref()).map_err(|mut f| {
                if a.passphrase_file.is_none() {
                    f.message
                        .push_str(" (or --no-escrow to create the key without escrow)");
                    f.code = exit::USAGE;
                }
                f
            })?,
        )
    };
    if pass.is_some() {
        // Preflight: a wrong config or an unreachable controller fails before any key exists.
        ctx.channel().await?;
    }
    let key = MasterKey::generate();
    key.write_new(&a.out)
        .map_err(|e| Failure::error(e.to_string()))?;
    println!(
        "wrote the fleet master key to {} (mode 0600)",
        a.out.display()
    );
    if let Some(pass) = pass {
        escrow_master(ctx, &key, &pass).await.map_err(|mut f| {
            f.message.push_str(&format!(
                "; the key in {} is NOT escrowed yet: run `lifeboatctl key escrow --key {}` once the controller is reachable",
                a.out.display(),
                a.out.display()
            ));
            f
        })?;
    }
    eprintln!(
        "WARNING: keep a copy of this key offline too (`lifeboatctl key export --paper --key {}`, printed, \
         in a safe). Copy it to each agent's directory as master.key, or run `lifeboat-agent key recover` there.",
        a.out.display()
    );
    Ok(())
}
