//! `lifeboatctl key escrow --key FILE [--ca-key FILE --ca-cert FILE]`: wraps an existing master
//! key and/or the controller's CA (run on the controller host, which has ca.key and ca.pem)
//! under an operator passphrase and stores the envelopes through the controller, which writes
//! them to both object stores (`keys/<kind>/…`). The passphrase and the plaintext never leave
//! this process: only the envelope is sent. Also the shared helpers of `key init`.

use std::path::{Path, PathBuf};

use lifeboat_common::escrow::{self, CaBundle, EscrowKind, KdfParams, Passphrase, passphrase};
use lifeboat_common::keys::MasterKey;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::{Ctx, Failure};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").args(["key", "ca_key"]).required(true).multiple(true)))]
pub struct Args {
    /// The fleet master key file to escrow.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The controller's CA private key (ca.key in the controller directory); needs --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The controller's CA certificate (ca.pem in the controller directory).
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Read the passphrase from the first line of FILE instead of the terminal (asked twice).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// Reads the passphrase for sealing (twice on a terminal) and checks its strength before
/// anything else happens, so a weak one stores and writes nothing.
pub fn sealing_passphrase(file: Option<&Path>) -> Result<Passphrase, Failure> {
    let source = match file {
        Some(f) => passphrase::Source::File(f),
        None => passphrase::Source::Terminal {
            prompt: "Escrow passphrase (keep it safe; needed to recover keys on a new host): ",
            confirm: true,
        },
    };
    let p = passphrase::read(source).map_err(|e| Failure::error(e.to_string()))?;
    passphrase::check_strength(p.as_str()).map_err(|e| Failure::error(e.to_string()))?;
    Ok(p)
}

/// Seals on a blocking thread (Argon2id takes about half a second and 256 MiB).
async fn seal_blocking<F>(f: F) -> Result<Vec<u8>, Failure>
where
    F: FnOnce() -> Result<Vec<u8>, escrow::EscrowError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::error(format!("key derivation task failed: {e}")))?
        .map_err(|e| Failure::error(e.to_string()))
}

/// Seals the master key and stores the envelope through the controller.
pub async fn escrow_master(ctx: &Ctx, key: &MasterKey, pass: &Passphrase) -> Result<(), Failure> {
    let (key, pass) = (key.clone(), pass.clone());
    let env = seal_blocking(move || escrow::seal_master(&key, KdfParams::DEFAULT, &pass)).await?;
    store(ctx, EscrowKind::Master, env).await
}

/// Sends one envelope to the controller and reports where it went.
pub async fn store(ctx: &Ctx, kind: EscrowKind, envelope: Vec<u8>) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let req = pb::PutKeyEscrowRequest {
        escrow: Some(pb::KeyEscrow {
            kind: kind.as_str().to_owned(),
            envelope: envelope.into(),
            ..Default::default()
        }),
    };
    let r = match client.put_key_escrow(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("PutKeyEscrow", &s).await),
    };
    let repl = if r.replication_queued {
        "queued for the secondary store"
    } else {
        "no secondary store configured"
    };
    println!("escrowed the {kind} key as {} ({repl})", r.object_key);
    Ok(())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::error(format!("cannot read {what} {}: {e}", path.display())))
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let key = match &a.key {
        Some(p) => Some(MasterKey::load(p).map_err(|e| Failure::error(e.to_string()))?),
        None => None,
    };
    let ca = match (&a.ca_key, &a.ca_cert) {
        (Some(k), Some(c)) => Some(CaBundle {
            cert_pem: read(c, "CA certificate")?,
            key_pem: read(k, "CA key")?,
        }),
        _ => None,
    };
    let pass = sealing_passphrase(a.passphrase_file.as_deref())?;
    if let Some(key) = &key {
        escrow_master(ctx, key, &pass).await?;
    }
    if let Some(ca) = ca {
        let p = pass.clone();
        let env = seal_blocking(move || escrow::seal_ca(&ca, KdfParams::DEFAULT, &p)).await?;
        store(ctx, EscrowKind::Ca, env).await?;
    }
    Ok(())
}
