//! `lifeboatctl key export --paper --key FILE` and `key import --paper [--from FILE] --out FILE`:
//! the master key as checksummed text for an offline copy (`lifeboat_common::escrow::paper`).
//! A single mistyped character is detected and located on import. Purely local: nothing is sent
//! to the controller.

use std::io::Read;
use std::path::PathBuf;

use lifeboat_common::escrow::paper;
use lifeboat_common::keys::MasterKey;

use super::Failure;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Print the paper form (the only export form).
    #[arg(long, required = true)]
    pub paper: bool,
    /// The master key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Read the paper form (the only import form).
    #[arg(long, required = true)]
    pub paper: bool,
    /// Read the typed-in text from FILE (default: stdin).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Where to write the key (must not exist; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<(), Failure> {
    let key = MasterKey::load(&a.key).map_err(|e| Failure::error(e.to_string()))?;
    print!("{}", paper::encode(&key));
    eprintln!(
        "Print this and keep it offline; `lifeboatctl key import --paper --out FILE` reads it back."
    );
    Ok(())
}

pub fn import(a: ImportArgs) -> Result<(), Failure> {
    let text = match &a.from {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Failure::error(format!("cannot read {}: {e}", p.display())))?,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut s)
                .map_err(|e| Failure::error(format!("cannot read stdin: {e}")))?;
            s
        }
    };
    let key = paper::decode(&text).map_err(|e| Failure::error(e.to_string()))?;
    key.write_new(&a.out)
        .map_err(|e| Failure::error(e.to_string()))?;
    println!(
        "wrote the fleet master key to {} (mode 0600)",
        a.out.display()
    );
    Ok(())
}
