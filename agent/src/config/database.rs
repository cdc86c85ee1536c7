//! The options of `mysql` sources and the nginx check of file sources, validated.
//!
//! `mysql`: `databases` (empty: every non-system database), credentials from `defaults_file`
//! (passed as `--defaults-extra-file`, must be mode 0600 or stricter and owned by us) or socket
//! authentication (`socket`, `user`), never a password on a command line. `dump_command` and
//! `client_command` override the probed `mariadb-dump`/`mysqldump` and `mariadb`/`mysql`
//! (tests use wrapper scripts). `verify = "counts" | "checksums"`; `users = true` also dumps
//! users and grants.
//!
//! nginx: `nginx_test = true` (implied by `kind = "nginx"`) runs `nginx -t` after a restore of
//! the source; `nginx_command`, `nginx_conf`, `nginx_prefix` override the binary, `-c` and `-p`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// What a dump records per table, and a restore compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Row counts counted from the dump stream (default).
    Counts,
    /// Counts plus `CHECKSUM TABLE` right after each dump (slow on big tables; races writes).
    Checksums,
}

impl Verify {
    pub fn as_str(self) -> &'static str {
        match self {
            Verify::Counts => "counts",
            Verify::Checksums => "checksums",
        }
    }
}

/// A validated `kind = "mysql"` source.
#[derive(Clone, Debug)]
pub struct MysqlConfig {
    pub databases: Vec<String>,
    pub defaults_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub user: Option<String>,
    pub dump_command: Option<PathBuf>,
    pub client_command: Option<PathBuf>,
    pub verify: Verify,
    pub users: bool,
}

/// How to run `nginx -t` / `nginx -s reload` after a restore.
#[derive(Clone, Debug)]
pub struct NginxCheck {
    pub command: PathBuf,
    pub conf: Option<PathBuf>,
    pub prefix: Option<PathBuf>,
}

/// The raw options, as parsed from `[[source]]`.
#[derive(Debug, Default)]
pub struct RawMysql {
    pub databases: Vec<String>,
    pub defaults_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub user: Option<String>,
    pub dump_command: Option<PathBuf>,
    pub client_command: Option<PathBuf>,
    pub verify: Option<String>,
    pub users: Option<bool>,
}

impl RawMysql {
    pub fn is_empty(&self) -> bool {
        self.databases.is_empty()
            && self.defaults_file.is_none()
            && self.socket.is_none()
            && self.user.is_none()
            && self.dump_command.is_none()
            && self.client_command.is_none()
            && self.verify.is_none()
            && self.users.is_none()
    }
}

/// A database name we pass to the tools: 1-64 of letters, digits, `_`, `$`, `-`, not starting
/// with `-` (so it can never be read as an option), and never a system schema.
pub fn validate_database_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'-');
    if !ok {
        return Err(format!(
            "database name {name:?} is not supported: use 1-64 of A-Z, a-z, 0-9, '_', '$', '-', not starting with '-'"
        ));
    }
    if SYSTEM_DATABASES.contains(&name) {
        return Err(format!(
            "database {name:?} is a system schema; users and grants are backed up with users = true"
        ));
    }
    Ok(())
}

/// Schemas never dumped as databases.
pub const SYSTEM_DATABASES: [&str; 4] =
    ["information_schema", "performance_schema", "mysql", "sys"];

/// Validates the mysql options of source `ctx` (already resolved against the config dir).
pub fn validate_mysql(ctx: &str, raw: RawMysql) -> Result<MysqlConfig, String> {
    for d in &raw.databases {
        validate_database_name(d).map_err(|e| format!("{ctx}: {e}"))?;
    }
    if let Some(f) = &raw.defaults_file {
        check_secret_file(f).map_err(|e| format!("{ctx}: defaults_file {}: {e}", f.display()))?;
    }
    let verify = match raw.verify.as_deref() {
        None | Some("counts") => Verify::Counts,
        Some("checksums") => Verify::Checksums,
        Some(other) => {
            return Err(format!(
                "{ctx}: verify = {other:?} is unknown: use \"counts\" or \"checksums\""
            ));
        }
    };
    if let Some(u) = &raw.user
        && (u.is_empty() || u.starts_with('-') || u.contains(['\n', '\0']))
    {
        return Err(format!("{ctx}: user {u:?} is invalid"));
    }
    Ok(MysqlConfig {
        databases: raw.databases,
        defaults_file: raw.defaults_file,
        socket: raw.socket,
        user: raw.user,
        dump_command: raw.dump_command,
        client_command: raw.client_command,
        verify,
        users: raw.users.unwrap_or(true),
    })
}

/// A file holding a password must not be readable by group or others.
fn check_secret_file(p: &std::path::Path) -> Result<(), String> {
    let m = std::fs::metadata(p).map_err(|e| format!("cannot read it: {e}"))?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:o} lets other users read the password: chmod 600 it",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn database_names_and_defaults_file_mode_are_checked() {
        assert!(validate_database_name("poc_db").is_ok());
        for bad in ["", "-x", "a b", "a`b", "mysql", "x'y"] {
            assert!(validate_database_name(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("my.cnf");
        std::fs::write(&f, "[client]\npassword=x\n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let raw = || RawMysql {
            defaults_file: Some(f.clone()),
            ..RawMysql::default()
        };
        let e = validate_mysql("source \"db\"", raw()).expect_err("0644");
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = validate_mysql("source \"db\"", raw()).expect("0600");
        assert_eq!((c.verify, c.users), (Verify::Counts, true));
        let e = validate_mysql(
            "s",
            RawMysql {
                verify: Some("crc".into()),
                ..RawMysql::default()
            },
        )
        .expect_err("verify");
        assert!(e.contains("checksums"), "{e}");
    }
}
