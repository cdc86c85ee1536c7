//! `lifeboat-agent key recover`: gets the fleet master key back on a fresh host (trust
//! invariant 4). The newest master envelope is fetched over the agent's mTLS identity (an
//! enrolled agent needs no key for that), unwrapped locally with the operator's passphrase, and
//! written to the config's `master_key` path.
//!
//! Failure modes: no escrow stored (NotFound, with what to run), wrong passphrase or damaged
//! envelope (nothing written), an existing *different* key file (refused: never overwritten). An
//! existing identical key is a success. The file appears atomically (temporary file, fsync,
//! hard link, which fails rather than replace a file that appeared meanwhile), mode 0600.

use std::fs;
use std::path::Path;

use lifeboat_common::escrow::{self, passphrase};
use lifeboat_common::exit;
use lifeboat_common::keys::MasterKey;

use super::{CmdResult, Failure, connect};
use crate::cli::{Cli, KeyRecoverArgs};
use crate::config::AgentConfig;
use crate::error::AgentError;

fn fail(message: String) -> Failure {
    Failure {
        message,
        code: exit::ERROR,
    }
}

pub async fn recover(cli: &Cli, args: &KeyRecoverArgs) -> CmdResult {
    let path = cli.config.as_deref().ok_or_else(|| Failure {
        message: "--config FILE is required (the agent.toml written by `lifeboat-agent enroll`)"
            .into(),
        code: exit::USAGE,
    })?;
    let cfg = AgentConfig::load_without_master_key(path)
        .map_err(|e| Failure::new(&AgentError::Config(e), None))?;
    let remote = connect(&cfg).await?;
    let escrow = remote
        .get_key_escrow()
        .await
        .map_err(|e| Failure::new(&AgentError::Remote(e), Some(&cfg)))?;
    let source = match &args.passphrase_file {
        Some(f) => passphrase::Source::File(f),
        None => passphrase::Source::Terminal {
            prompt: "Escrow passphrase: ",
            confirm: false,
        },
    };
    let pass = passphrase::read(source).map_err(|e| fail(e.to_string()))?;
    let envelope = escrow.envelope.clone();
    let key = tokio::task::spawn_blocking(move || escrow::open_master(&envelope, &pass))
        .await
        .map_err(|e| fail(format!("key derivation task failed: {e}")))?
        .map_err(|e| {
            fail(format!(
                "cannot unwrap the escrowed master key {}: {e}",
                escrow.object_key
            ))
        })?;
    let wrote = install(&cfg.master_key, &key)?;
    if wrote {
        println!(
            "recovered the fleet master key from escrow {} into {} (mode 0600)",
            escrow.object_key,
            cfg.master_key.display()
        );
    } else {
        println!(
            "{} already holds the escrowed master key ({}); nothing changed",
            cfg.master_key.display(),
            escrow.object_key
        );
    }
    Ok(exit::SUCCESS)
}

/// Writes `key` to `path` unless it is there already; `Ok(false)` when an identical key exists.
fn install(path: &Path, key: &MasterKey) -> Result<bool, Failure> {
    if fs::symlink_metadata(path).is_ok() {
        let existing = MasterKey::load(path).map_err(|e| {
            fail(format!(
                "{e}; the recovered key was not written (move the existing file away first)"
            ))
        })?;
        if existing.expose_bytes() == key.expose_bytes() {
            return Ok(false);
        }
        return Err(fail(format!(
            "{} already holds a different master key; refusing to overwrite it (move it away if it is wrong, then run key recover again)",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "master.key".into());
    let tmp = path.with_file_name(format!(".{name}.recover-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    key.write_new(&tmp).map_err(|e| fail(e.to_string()))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| {
        fail(format!(
            "cannot create master key file {}: {e}",
            path.display()
        ))
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(format!("cannot sync directory {}: {e}", dir.display())))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_once_accepts_identical_and_refuses_different() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("master.key");
        let key = MasterKey::from_bytes([4; 32]);
        assert!(install(&p, &key).expect("first"));
        assert_eq!(MasterKey::load(&p).expect("load").expose_bytes(), &[4; 32]);
        assert!(!install(&p, &key).expect("identical"));
        let other = MasterKey::from_bytes([5; 32]);
        let e = install(&p, &other).expect_err("different");
        assert!(e.message.contains("refusing to overwrite"), "{}", e.message);
        assert_eq!(MasterKey::load(&p).expect("load").expose_bytes(), &[4; 32]);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }
}
