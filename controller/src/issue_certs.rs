//! `lifeboat-controller issue-certs`: the certificates a rebuilt controller needs around a
//! recovered CA (runbook "controller host lost").
//!
//! After `recover-ca` (the fleet's CA back from its escrow) and `rebuild-catalog` (the catalog
//! back from the bucket), the new host still lacks what lived only on the lost disk: the
//! server certificate and, usually, the operator's admin certificate. This command issues them
//! from the recovered CA, so every agent — which pins that CA — accepts the new controller
//! without re-enrollment:
//! - the server certificate (with `--san` names) when the config's `cert`/`key` are both
//!   missing; existing ones are kept (both present) or refused (only one present);
//! - with `--admin-out DIR`, a new admin certificate, key, a copy of the CA and a
//!   `lifeboatctl.toml` in DIR (the controller directory itself is fine: an identical CA copy
//!   is accepted), and its fingerprint recorded as an admin in the catalog (the
//!   serving controller writes its registry object at start-up, see `registry::backfill`).
//!
//! Holding the CA key already allows minting admin certificates, so this adds no power beyond
//! root on the controller host. Files are created with `create_new` (never overwritten), keys
//! mode 0600.

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_common::clock::now_unix_ms;
use thiserror::Error;

use crate::auth::fingerprint;
use crate::ca::{Ca, CaError, parse_san};
use crate::catalog::{Catalog, CatalogError, agents};
use crate::config::{ControllerConfig, ctl_toml};
use crate::init::{InitError, connect_address, write_file};

#[derive(Debug, Error)]
pub enum IssueError {
    #[error(
        "{present} exists but {missing} does not; restore both or remove {present} to issue a new server certificate"
    )]
    HalfServer { present: PathBuf, missing: PathBuf },
    #[error(
        "the catalog {path} does not exist; run `lifeboat-controller rebuild-catalog --config ...` first (or `init` for a new controller)"
    )]
    NoCatalog { path: PathBuf },
    #[error("{path} already exists; choose an empty --admin-out directory")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] InitError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What was issued.
#[derive(Debug, Default)]
pub struct Issued {
    pub server: Option<PathBuf>,
    pub admin_dir: Option<PathBuf>,
    pub admin_fingerprint: Option<String>,
}

/// Issues the missing server certificate and, with `admin_out`, a new admin certificate.
pub fn issue(
    cfg: &ControllerConfig,
    sans: &[String],
    admin_out: Option<&Path>,
) -> Result<Issued, IssueError> {
    for s in sans {
        parse_san(s)?;
    }
    let ca = Ca::load(&cfg.ca_cert, &cfg.ca_key)?;
    let mut out = Issued::default();
    match (cfg.cert.exists(), cfg.key.exists()) {
        (true, true) => {}
        (false, false) => {
            let server = ca.issue_server(sans)?;
            write_file(&cfg.key, &server.key_pem, 0o600)?;
            write_file(&cfg.cert, &server.cert_pem, 0o644)?;
            out.server = Some(cfg.cert.clone());
        }
        (true, false) => return Err(half(&cfg.cert, &cfg.key)),
        (false, true) => return Err(half(&cfg.key, &cfg.cert)),
    }
    if let Some(dir) = admin_out {
        out.admin_fingerprint = Some(issue_admin(cfg, &ca, dir)?);
        out.admin_dir = Some(dir.to_owned());
    }
    Ok(out)
}

fn half(present: &Path, missing: &Path) -> IssueError {
    IssueError::HalfServer {
        present: present.to_owned(),
        missing: missing.to_owned(),
    }
}

fn issue_admin(cfg: &ControllerConfig, ca: &Ca, dir: &Path) -> Result<String, IssueError> {
    if !cfg.catalog.exists() {
        return Err(IssueError::NoCatalog {
            path: cfg.catalog.clone(),
        });
    }
    // The CA copy may already be there (--admin-out pointing at the controller directory, where
    // recover-ca wrote it): identical is fine, anything else is refused like the other files.
    let ca_copy = dir.join("ca.pem");
    let ca_present = fs::read_to_string(&ca_copy).ok();
    if ca_present.as_deref().is_some_and(|c| c != ca.cert_pem()) {
        return Err(IssueError::Exists { path: ca_copy });
    }
    for f in ["admin.pem", "admin.key", "lifeboatctl.toml"] {
        let p = dir.join(f);
        if p.exists() {
            return Err(IssueError::Exists { path: p });
        }
    }
    fs::create_dir_all(dir).map_err(|source| IssueError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let admin = ca.issue_admin()?;
    let fp = fingerprint(&admin.cert_der);
    let catalog = Catalog::open(&cfg.catalog)?;
    let f = fp.clone();
    catalog.run_blocking(move |c| agents::insert_admin(c, &f, now_unix_ms()))?;
    write_file(&dir.join("admin.key"), &admin.key_pem, 0o600)?;
    write_file(&dir.join("admin.pem"), &admin.cert_pem, 0o644)?;
    if ca_present.is_none() {
        write_file(&ca_copy, ca.cert_pem(), 0o644)?;
    }
    let address = format!("https://{}", connect_address(&cfg.listen));
    write_file(&dir.join("lifeboatctl.toml"), &ctl_toml(&address), 0o600)?;
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn issues_missing_server_cert_and_an_admin_then_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        crate::init::init(&dir, "127.0.0.1:7443", &[]).expect("init");
        let cfg = ControllerConfig::load(&dir.join("controller.toml")).expect("config");
        // Lost: the server certificate and key. Kept: CA, catalog.
        fs::remove_file(&cfg.cert).expect("rm");
        fs::remove_file(&cfg.key).expect("rm");
        let admin_dir = tmp.path().join("admin");
        let r = issue(&cfg, &["backup.example.org".into()], Some(&admin_dir)).expect("issue");
        assert_eq!(r.server.as_deref(), Some(cfg.cert.as_path()));
        let fp = r.admin_fingerprint.expect("admin");
        let catalog = Catalog::open(&cfg.catalog).expect("catalog");
        let f = fp.clone();
        assert!(
            catalog
                .run_blocking(move |c| agents::is_admin(c, &f))
                .expect("query")
        );
        let mode = fs::metadata(admin_dir.join("admin.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Again: the server certificate exists now (kept), the admin directory is not empty.
        let e = issue(&cfg, &[], Some(&admin_dir)).expect_err("admin dir reused");
        assert!(matches!(e, IssueError::Exists { .. }), "{e}");
        assert!(
            issue(&cfg, &[], None)
                .expect("server kept")
                .server
                .is_none()
        );
        // Half a server identity is refused, naming both files.
        fs::remove_file(&cfg.key).expect("rm");
        let e = issue(&cfg, &[], None).expect_err("half").to_string();
        assert!(e.contains("server.pem") && e.contains("server.key"), "{e}");
    }

    #[test]
    fn admin_without_a_catalog_says_to_rebuild_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        crate::init::init(&dir, "127.0.0.1:7443", &[]).expect("init");
        let cfg = ControllerConfig::load(&dir.join("controller.toml")).expect("config");
        fs::remove_file(&cfg.catalog).expect("rm");
        let e = issue(&cfg, &[], Some(&tmp.path().join("a"))).expect_err("no catalog");
        assert!(e.to_string().contains("rebuild-catalog"), "{e}");
    }
}
