//! `lifeboat-controller init`: creates a controller directory (see ARCHITECTURE.md).
//!
//! Writes the CA, the server and admin certificates (keys mode 0600), the catalog with the admin
//! certificate's fingerprint, `objects/`, and commented `controller.toml` and `lifeboatctl.toml`.
//! It refuses to touch a directory that already holds any of these files, so an initialized
//! controller (and its CA) can never be overwritten by mistake. Files are created with
//! `create_new`; a failure part-way leaves the files made so far, and the error names the file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lifeboat_common::clock::now_unix_ms;
use thiserror::Error;

use crate::auth::fingerprint;
use crate::ca::{Ca, CaError, parse_san};
use crate::catalog::{Catalog, CatalogError, agents};
use crate::config::{controller_toml, ctl_toml};

/// Every file and directory `init` creates, relative to the directory.
pub const FILES: [&str; 10] = [
    "controller.toml",
    "lifeboatctl.toml",
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "admin.pem",
    "admin.key",
    "catalog.db",
    "objects",
];

#[derive(Debug, Error)]
pub enum InitError {
    #[error(
        "{path} already exists: {dir} looks initialized; refusing to overwrite it (choose another --dir)"
    )]
    Exists { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub dir: PathBuf,
    pub listen: String,
    pub admin_fingerprint: String,
}

/// Writes a new file (never replacing one) with exactly `mode`, synced to disk.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), InitError> {
    let err = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    // The umask may have narrowed the mode; make it exact.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
}

/// Initializes `dir` (created if missing).
pub fn init(dir: &Path, listen: &str, sans: &[String]) -> Result<InitReport, InitError> {
    for s in sans {
        parse_san(s)?;
    }
    for f in FILES {
        let p = dir.join(f);
        if p.exists() {
            return Err(InitError::Exists {
                path: p,
                dir: dir.to_owned(),
            });
        }
    }
    let mk = |p: &Path| {
        fs::create_dir_all(p).map_err(|source| InitError::Write {
            path: p.to_owned(),
            source,
        })
    };
    mk(dir)?;
    let (ca, ca_key) = Ca::generate()?;
    let server = ca.issue_server(sans)?;
    let admin = ca.issue_admin()?;
    write_file(&dir.join("ca.key"), &ca_key, 0o600)?;
    write_file(&dir.join("ca.pem"), ca.cert_pem(), 0o644)?;
    write_file(&dir.join("server.key"), &server.key_pem, 0o600)?;
    write_file(&dir.join("server.pem"), &server.cert_pem, 0o644)?;
    write_file(&dir.join("admin.key"), &admin.key_pem, 0o600)?;
    write_file(&dir.join("admin.pem"), &admin.cert_pem, 0o644)?;
    let admin_fingerprint = fingerprint(&admin.cert_der);
    let catalog = Catalog::open(&dir.join("catalog.db"))?;
    let fp = admin_fingerprint.clone();
    catalog.run_blocking(|c| agents::insert_admin(c, &fp, now_unix_ms()))?;
    drop(catalog);
    mk(&dir.join("objects"))?;
    write_file(
        &dir.join("controller.toml"),
        &controller_toml(listen),
        0o644,
    )?;
    let address = format!("https://{}", connect_address(listen));
    write_file(&dir.join("lifeboatctl.toml"), &ctl_toml(&address), 0o600)?;
    Ok(InitReport {
        dir: dir.to_owned(),
        listen: listen.to_owned(),
        admin_fingerprint,
    })
}

/// The address a local client should use for a listen address (0.0.0.0 → 127.0.0.1).
pub fn connect_address(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_the_directory_and_refuses_twice() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ctl");
        let r = init(
            &dir,
            "127.0.0.1:7443",
            &["backup.example.com".into(), "10.1.2.3".into()],
        )
        .expect("init");
        assert_eq!(r.admin_fingerprint.len(), 64);
        for f in ["ca.key", "server.key", "admin.key"] {
            let mode = fs::metadata(dir.join(f))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert!(dir.join("objects").is_dir());
        let cfg = crate::config::ControllerConfig::load(&dir.join("controller.toml")).expect("cfg");
        assert_eq!(cfg.ca_key, dir.join("ca.key"));
        let ctl = crate::config::CtlConfig::load(&dir.join("lifeboatctl.toml")).expect("ctl");
        assert_eq!(ctl.address, "https://127.0.0.1:7443");
        let cat = Catalog::open(&dir.join("catalog.db")).expect("catalog");
        let fp = r.admin_fingerprint.clone();
        assert!(
            cat.run_blocking(|c| agents::is_admin(c, &fp))
                .expect("admin")
        );
        let e = init(&dir, "127.0.0.1:7443", &[]).expect_err("second init");
        assert!(matches!(e, InitError::Exists { .. }), "{e}");
    }
}
