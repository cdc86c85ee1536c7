//! MySQL/MariaDB: the tools (`mariadb-dump`/`mysqldump`, `mariadb`/`mysql`), how they connect,
//! and the SQL the agent runs to list, count and check what a dump or a restore holds.
//!
//! Credentials never appear on a command line (where `ps` shows them): the connection is
//! `--defaults-extra-file=FILE` (checked 0600 when the config loads) and/or socket
//! authentication (`--socket`, `--user`, no password). Every tool runs with stdin, stdout and
//! stderr piped; stderr is kept (its last [`STDERR_KEEP`] bytes) for error messages.
//!
//! - [`scan`]: the dump-stream scanner (tables, rows, trailer, binlog position).
//! - [`dump`]: one dump process streamed into the chunker.
//! - [`load`]: one restore stream piped into the client.
//!
//! MySQL 8 cannot be tested here (Debian ships only MariaDB): its differences are kept to the
//! binlog option (`--source-data=2` from 8.0.26) and users, which it cannot dump (`users = false`).

pub mod dump;
pub mod load;
pub mod scan;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::config::MysqlConfig;

/// Bytes of a tool's stderr kept for messages.
pub const STDERR_KEEP: usize = 8 << 10;

#[derive(Debug, Error)]
pub enum MysqlError {
    #[error(
        "cannot find {what} in PATH ({tried}); install the MariaDB/MySQL client or set {key} in the source"
    )]
    ToolMissing {
        what: &'static str,
        tried: String,
        key: &'static str,
    },
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}) running {what}: {stderr}")]
    Failed {
        tool: String,
        what: String,
        status: String,
        stderr: String,
    },
    #[error("unexpected answer from the server to {what}: {detail}")]
    Answer { what: String, detail: String },
}

/// The server flavour, from `VERSION()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    /// MySQL with (major, minor, patch).
    Mysql(u32, u32, u32),
}

/// How to reach one server: tools and connection arguments.
#[derive(Clone, Debug)]
pub struct Server {
    pub dump_tool: PathBuf,
    pub client: PathBuf,
    conn: Vec<String>,
}

/// Finds the first of `names` in PATH.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Server {
    /// Probes the tools (`mariadb-dump` before `mysqldump`, `mariadb` before `mysql`) unless
    /// the config names them.
    pub fn new(cfg: &MysqlConfig) -> Result<Server, MysqlError> {
        let dump_tool = match &cfg.dump_command {
            Some(p) => p.clone(),
            None => which(&["mariadb-dump", "mysqldump"]).ok_or(MysqlError::ToolMissing {
                what: "mariadb-dump or mysqldump",
                tried: "mariadb-dump, mysqldump".into(),
                key: "dump_command",
            })?,
        };
        let client = match &cfg.client_command {
            Some(p) => p.clone(),
            None => which(&["mariadb", "mysql"]).ok_or(MysqlError::ToolMissing {
                what: "mariadb or mysql",
                tried: "mariadb, mysql".into(),
                key: "client_command",
            })?,
        };
        let mut conn = Vec::new();
        // --defaults-extra-file must come first on the command line.
        if let Some(f) = &cfg.defaults_file {
            conn.push(format!("--defaults-extra-file={}", f.display()));
        }
        if let Some(s) = &cfg.socket {
            conn.push(format!("--socket={}", s.display()));
        }
        if let Some(u) = &cfg.user {
            conn.push(format!("--user={u}"));
        }
        Ok(Server {
            dump_tool,
            client,
            conn,
        })
    }

    /// A command for `tool` with the connection arguments.
    pub fn command(&self, tool: &Path) -> Command {
        let mut c = Command::new(tool);
        c.args(&self.conn);
        c
    }

    /// Runs SQL with the client (`-N -B`); returns rows of tab-separated columns.
    pub fn query(&self, what: &str, sql: &str) -> Result<Vec<Vec<String>>, MysqlError> {
        let out = self
            .command(&self.client)
            .args(["-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| MysqlError::Spawn {
                tool: self.client.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(MysqlError::Failed {
                tool: self.client.display().to_string(),
                what: what.to_owned(),
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect())
    }

    /// Version string and flavour, `@@log_bin`, and the GTID position if any.
    pub fn info(&self) -> Result<ServerInfo, MysqlError> {
        let rows = self.query("SELECT VERSION(), @@log_bin", "SELECT VERSION(), @@log_bin")?;
        let row = rows
            .first()
            .filter(|r| r.len() == 2)
            .ok_or_else(|| MysqlError::Answer {
                what: "SELECT VERSION()".into(),
                detail: format!("{rows:?}"),
            })?;
        let version = row[0].clone();
        let flavor = flavor(&version);
        let gtid_sql = match flavor {
            Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
            Flavor::Mysql(..) => "SELECT @@gtid_executed",
        };
        let gtid = self
            .query("GTID position", gtid_sql)
            .ok()
            .and_then(|r| r.first().and_then(|r| r.first().cloned()))
            .filter(|g| g != "NULL")
            .unwrap_or_default();
        Ok(ServerInfo {
            version,
            flavor,
            log_bin: row[1] == "1",
            gtid,
        })
    }

    /// Every non-system database.
    pub fn databases(&self) -> Result<Vec<String>, MysqlError> {
        let rows = self.query(
            "list databases",
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .filter(|d| !crate::config::database::SYSTEM_DATABASES.contains(&d.as_str()))
            .collect())
    }

    /// Whether database `db` exists, with its charset and collation.
    pub fn schema(&self, db: &str) -> Result<Option<(String, String)>, MysqlError> {
        let rows = self.query(
            "read the database's charset",
            &format!(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'"
            ),
        )?;
        Ok(rows
            .into_iter()
            .find(|r| r.len() == 2)
            .map(|r| (r[0].clone(), r[1].clone())))
    }

    /// The objects of `db`, by kind.
    pub fn objects(&self, db: &str) -> Result<Objects, MysqlError> {
        let sql = format!(
            "SELECT 'T', TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}'
             UNION ALL SELECT 'R', ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{db}'
             UNION ALL SELECT 'G', TRIGGER_NAME, '' FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}'
             UNION ALL SELECT 'E', EVENT_NAME, '' FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{db}'"
        );
        let mut o = Objects::default();
        for r in self.query("list tables, views, routines, triggers and events", &sql)? {
            let [kind, name, ty] = r.as_slice() else {
                continue;
            };
            let list = match (kind.as_str(), ty.as_str()) {
                ("T", "BASE TABLE") => &mut o.tables,
                ("T", "VIEW") => &mut o.views,
                ("R", _) => &mut o.routines,
                ("G", _) => &mut o.triggers,
                ("E", _) => &mut o.events,
                _ => continue,
            };
            list.push(name.clone());
        }
        for l in [
            &mut o.tables,
            &mut o.views,
            &mut o.routines,
            &mut o.triggers,
            &mut o.events,
        ] {
            l.sort();
        }
        Ok(o)
    }

    /// `SELECT COUNT(*)` of each table of `db`.
    pub fn row_counts(
        &self,
        db: &str,
        tables: &[String],
    ) -> Result<BTreeMap<String, u64>, MysqlError> {
        let mut out = BTreeMap::new();
        for batch in tables.chunks(200) {
            let sql: Vec<String> = batch
                .iter()
                .map(|t| {
                    format!(
                        "SELECT {}, COUNT(*) FROM {}.{}",
                        sql_string(t),
                        ident(db),
                        ident(t)
                    )
                })
                .collect();
            for r in self.query("count rows", &sql.join(" UNION ALL "))? {
                if let [name, n] = r.as_slice() {
                    out.insert(name.clone(), parse_u64("COUNT(*)", n)?);
                }
            }
        }
        Ok(out)
    }

    /// `CHECKSUM TABLE` of each table of `db` (NULL for engines without one is left out).
    pub fn checksums(
        &self,
        db: &str,
        tables: &[String],
    ) -> Result<BTreeMap<String, u64>, MysqlError> {
        let mut out = BTreeMap::new();
        for batch in tables.chunks(200) {
            let list: Vec<String> = batch
                .iter()
                .map(|t| format!("{}.{}", ident(db), ident(t)))
                .collect();
            for r in self.query(
                "CHECKSUM TABLE",
                &format!("CHECKSUM TABLE {}", list.join(", ")),
            )? {
                if let [name, sum] = r.as_slice()
                    && sum != "NULL"
                {
                    let table = name.split_once('.').map_or(name.as_str(), |(_, t)| t);
                    out.insert(table.to_owned(), parse_u64("CHECKSUM TABLE", sum)?);
                }
            }
        }
        Ok(out)
    }

    /// Accounts on the server, as `'user'@'host'`.
    pub fn users(&self) -> Result<Vec<String>, MysqlError> {
        let rows = self.query(
            "list users",
            "SELECT User, Host FROM mysql.user ORDER BY User, Host",
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [u, h] => Some(format!("'{u}'@'{h}'")),
                _ => None,
            })
            .collect())
    }
}

/// Server facts read before a backup.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub version: String,
    pub flavor: Flavor,
    pub log_bin: bool,
    pub gtid: String,
}

/// Objects of one database (sorted names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub tables: Vec<String>,
    pub views: Vec<String>,
    pub routines: Vec<String>,
    pub triggers: Vec<String>,
    pub events: Vec<String>,
}

/// The flavour of a `VERSION()` string.
pub fn flavor(version: &str) -> Flavor {
    if version.contains("MariaDB") {
        return Flavor::MariaDb;
    }
    let mut nums = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0));
    Flavor::Mysql(
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
    )
}

/// The dump option that writes binary log coordinates (only when `@@log_bin` is on).
pub fn binlog_option(f: Flavor) -> &'static str {
    match f {
        Flavor::Mysql(major, minor, patch) if (major, minor, patch) >= (8, 0, 26) => {
            "--source-data=2"
        }
        _ => "--master-data=2",
    }
}

/// A backquoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A single-quoted SQL string literal.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_u64(what: &str, v: &str) -> Result<u64, MysqlError> {
    v.trim().parse().map_err(|_| MysqlError::Answer {
        what: what.to_owned(),
        detail: format!("{v:?} is not a number"),
    })
}

/// The last [`STDERR_KEEP`] bytes of a tool's stderr, trimmed, as text.
pub fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_KEEP);
    let s = String::from_utf8_lossy(&stderr[start..]).trim().to_owned();
    if s.is_empty() {
        "(no error output)".into()
    } else {
        s
    }
}

/// Reads a child's stderr on a thread, keeping its tail.
pub fn collect_stderr(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    keep.extend_from_slice(&buf[..n]);
                    if keep.len() > 2 * STDERR_KEEP {
                        keep.drain(..keep.len() - STDERR_KEEP);
                    }
                }
            }
        }
        keep
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_and_binlog_options() {
        assert_eq!(flavor("10.11.6-MariaDB-0+deb12u1"), Flavor::MariaDb);
        assert_eq!(flavor("8.0.36-0ubuntu0.24.04.1"), Flavor::Mysql(8, 0, 36));
        assert_eq!(binlog_option(Flavor::MariaDb), "--master-data=2");
        assert_eq!(binlog_option(Flavor::Mysql(8, 0, 36)), "--source-data=2");
        assert_eq!(binlog_option(Flavor::Mysql(5, 7, 44)), "--master-data=2");
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(sql_string("it's"), "'it\\'s'");
    }
}
