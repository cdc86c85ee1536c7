//! `lifeboatctl key init --out FILE`: creates the fleet master key locally. The controller never
//! receives it (trust invariant 1); the file is mode 0600 and never overwritten.

use std::path::PathBuf;

use lifeboat_common::keys::MasterKey;

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the key (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<(), Failure> {
    MasterKey::generate()
        .write_new(&a.out)
        .map_err(|e| Failure::error(e.to_string()))?;
    println!(
        "wrote the fleet master key to {} (mode 0600)",
        a.out.display()
    );
    eprintln!(
        "WARNING: keep a copy of this key offline (e.g. printed, in a safe). Without it no backup can be \
         decrypted, and the controller does not have it. Copy it to each agent's directory as master.key."
    );
    Ok(())
}
