//! The agent's configuration file (`agent.toml`) and its validated runtime form.
//!
//! The file is parsed with `deny_unknown_fields` everywhere, so a misspelt key is an error that
//! names the key, the line and the file. Relative paths are resolved against the directory that
//! holds the config file. [`AgentConfig::load`] then validates everything a command relies on:
//! source kinds and names (unique), absolute source paths, intervals, chunker parameters, the zstd
//! level, exclude globs, and that the certificate, key, CA and master key files exist. The
//! environment variable `LIFEBOAT_ADDRESS` overrides `[controller] address`.
//!
//! Pattern rule (`exclude`, `dump_files`): a pattern without `/` matches an entry's file name
//! (`*.swp`, `cache`); a pattern with `/` matches the entry's absolute path (`/var/www/*/tmp`,
//! `/var/www/**/*.log`), where `*` and `?` do not cross `/` and `**` does. An excluded directory
//! is not descended into.
//!
//! `dump_files` (files sources; default `["*.sql"]`, `[]` for none): files chunked with the
//! dump parameters ([`ChunkerParams::DUMPS`], 8 KiB average) instead of the source's, because a
//! dump rewritten with a few rows changed then re-stores a few small chunks rather than most of
//! its 1 MiB ones (docs/adr/0005-dump-chunking.md).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::config::{ConfigError, load_toml, resolve};
use serde::Deserialize;

pub mod database;
pub use database::{MysqlConfig, NginxCheck, Verify};
use database::{RawMysql, validate_mysql};

/// Environment variable that overrides `[controller] address`.
pub const ADDRESS_ENV: &str = "LIFEBOAT_ADDRESS";
/// Default zstd level for blobs. Level 1, by measurement (docs/performance-history.md,
/// "Backup"): on the bench's web root + dump in 1 MiB blocks, level 1 compresses text at 464 MB/s
/// to 9.79 MB where level 3 does 366 MB/s to 9.50 MB (+3% bytes for -21% CPU; +0.8% over the
/// whole data set).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Default `dump_files` of a files source.
pub const DEFAULT_DUMP_FILES: [&str; 1] = ["*.sql"];
/// Default backup interval for `lifeboat-agent run`.
pub const DEFAULT_INTERVAL: &str = "1h";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    master_key: PathBuf,
    zstd_level: Option<i32>,
    controller: RawController,
    #[serde(default)]
    source: Vec<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    address: String,
    #[serde(default = "default_server_name")]
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    kind: String,
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    exclude: Vec<String>,
    interval: Option<String>,
    chunker: Option<ChunkerParams>,
    dump_files: Option<Vec<String>>,
    // kind = "mysql" (see `database`)
    #[serde(default)]
    databases: Vec<String>,
    defaults_file: Option<PathBuf>,
    socket: Option<PathBuf>,
    user: Option<String>,
    dump_command: Option<PathBuf>,
    client_command: Option<PathBuf>,
    verify: Option<String>,
    users: Option<bool>,
    // nginx check after a restore (files sources; implied by kind = "nginx")
    nginx_test: Option<bool>,
    nginx_command: Option<PathBuf>,
    nginx_conf: Option<PathBuf>,
    nginx_prefix: Option<PathBuf>,
}

/// The name in the controller's certificate when `server_name` is not set.
pub const DEFAULT_SERVER_NAME: &str = "lifeboat-controller";

fn default_server_name() -> String {
    DEFAULT_SERVER_NAME.into()
}

/// How to reach the controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub address: String,
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The kinds of source this agent knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A file tree (web root, nginx configuration). `kind = "nginx"` is a file tree too (the
    /// preset: `/var/www` and `/etc/nginx` unless `paths` says otherwise, with `nginx -t`).
    Files,
    /// MySQL/MariaDB logical dumps, one stream per database.
    Mysql,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Mysql => "mysql",
        }
    }
}

/// Paths of the `nginx` preset when `paths` is not given.
pub const NGINX_PRESET_PATHS: [&str; 2] = ["/var/www", "/etc/nginx"];

/// Compiled path patterns: `exclude` and `dump_files` (see the module docs for the rule).
#[derive(Clone, Debug, Default)]
pub struct PathPatterns {
    names: GlobSet,
    paths: GlobSet,
    patterns: Vec<String>,
}

impl PathPatterns {
    /// Compiles patterns; the error names the bad pattern.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("invalid pattern {p:?}: {e}"))?;
            if p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| format!("invalid patterns: {e}"));
        Ok(PathPatterns {
            names: build(names)?,
            paths: build(paths)?,
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the entry at absolute path `abs` matches.
    pub fn matches(&self, abs: &Path) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        if self.paths.is_match(abs) {
            return true;
        }
        abs.file_name().is_some_and(|n| self.names.is_match(n))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// One validated `[[source]]`.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// Absolute root paths, in config order (the manifest's root indices follow it).
    pub paths: Vec<PathBuf>,
    pub excludes: PathPatterns,
    pub interval: Duration,
    pub chunker: ChunkerParams,
    /// Files chunked with [`ChunkerParams::DUMPS`] instead of `chunker` (files sources).
    pub dump_files: PathPatterns,
    /// Set for `kind = "mysql"`.
    pub mysql: Option<MysqlConfig>,
    /// Set when `nginx -t` runs after a restore of this source.
    pub nginx: Option<NginxCheck>,
}

impl SourceConfig {
    /// The chunker parameters of the file at absolute path `abs`: the dump ones for
    /// `dump_files`, else the source's.
    pub fn chunker_for(&self, abs: &Path) -> ChunkerParams {
        if self.dump_files.matches(abs) {
            ChunkerParams::DUMPS
        } else {
            self.chunker
        }
    }
}

/// The validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The config file itself (named in error hints).
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub master_key: PathBuf,
    pub zstd_level: i32,
    pub controller: ControllerConfig,
    pub sources: Vec<SourceConfig>,
}

impl AgentConfig {
    /// Loads, resolves and validates `path`, applying `LIFEBOAT_ADDRESS`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_toml(path)?;
        let env = std::env::var(ADDRESS_ENV).ok().filter(|a| !a.is_empty());
        Self::validate_opts(path, raw, env, true)
    }

    /// Like [`AgentConfig::load`], but the master key file need not exist yet: for
    /// `lifeboat-agent key recover` on a fresh host, which is what creates it.
    pub fn load_without_master_key(path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_toml(path)?;
        let env = std::env::var(ADDRESS_ENV).ok().filter(|a| !a.is_empty());
        Self::validate_opts(path, raw, env, false)
    }

    /// The source named `name`, or an error listing the configured ones.
    pub fn source(&self, name: &str) -> Result<&SourceConfig, ConfigError> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| {
            self.invalid(format!(
                "no source named {name:?}; configured sources: {}",
                self.source_names()
            ))
        })
    }

    fn source_names(&self) -> String {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        }
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message,
        }
    }

    #[cfg(test)]
    fn validate(
        path: &Path,
        raw: RawConfig,
        env_address: Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::validate_opts(path, raw, env_address, true)
    }

    fn validate_opts(
        path: &Path,
        raw: RawConfig,
        env_address: Option<String>,
        require_master_key: bool,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let zstd_level = raw.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
        if !(0..=22).contains(&zstd_level) {
            return Err(invalid(format!(
                "zstd_level {zstd_level} is out of range: use 0 (none) to 22"
            )));
        }
        let c = raw.controller;
        let address = env_address.unwrap_or(c.address);
        if !(address.starts_with("https://")) {
            return Err(invalid(format!(
                "[controller] address {address:?} must start with https:// (mutual TLS is required)"
            )));
        }
        let controller = ControllerConfig {
            address,
            server_name: c.server_name,
            ca: resolve(path, &c.ca),
            cert: resolve(path, &c.cert),
            key: resolve(path, &c.key),
        };
        let master_key = resolve(path, &raw.master_key);
        for (what, file) in [
            ("[controller] ca", &controller.ca),
            ("[controller] cert", &controller.cert),
            ("[controller] key", &controller.key),
            ("master_key", &master_key),
        ] {
            if what == "master_key" && !require_master_key {
                continue;
            }
            if !file.is_file() {
                return Err(invalid(format!(
                    "{what} file {} does not exist{}",
                    file.display(),
                    missing_hint(what)
                )));
            }
        }
        let mut sources = Vec::new();
        let mut names = HashSet::new();
        for mut s in raw.source {
            for p in [
                &mut s.defaults_file,
                &mut s.socket,
                &mut s.dump_command,
                &mut s.client_command,
                &mut s.nginx_conf,
                &mut s.nginx_prefix,
            ]
            .into_iter()
            .flatten()
            {
                if p.components().count() > 1 {
                    *p = resolve(path, p);
                }
            }
            let src = validate_source(s).map_err(&invalid)?;
            if !names.insert(src.name.clone()) {
                return Err(invalid(format!("duplicate source name {:?}", src.name)));
            }
            sources.push(src);
        }
        Ok(AgentConfig {
            path: path.to_owned(),
            state_dir: resolve(path, &raw.state_dir),
            master_key,
            zstd_level,
            controller,
            sources,
        })
    }
}

fn missing_hint(what: &str) -> &'static str {
    match what {
        "[controller] cert" | "[controller] ca" => {
            "; run `lifeboatctl agent add NAME --csr agent.csr --out DIR` on the controller and copy agent.pem and ca.pem here"
        }
        "master_key" => {
            "; copy the fleet master key here (mode 0600), or fetch it from the escrow with `lifeboat-agent key recover`"
        }
        _ => "; it is created by `lifeboat-agent init`",
    }
}

fn validate_source(mut s: RawSource) -> Result<SourceConfig, String> {
    lifeboat_common::ids::validate_source_name(&s.name).map_err(|e| e.to_string())?;
    let ctx = format!("source {:?}", s.name);
    let kind = match s.kind.as_str() {
        "files" | "nginx" => SourceKind::Files,
        "mysql" => SourceKind::Mysql,
        other => {
            return Err(format!(
                "{ctx}: unknown kind {other:?} (known kinds: files, nginx, mysql)"
            ));
        }
    };
    let preset = s.kind == "nginx";
    if preset && s.paths.is_empty() {
        s.paths = NGINX_PRESET_PATHS.iter().map(PathBuf::from).collect();
    }
    let raw_mysql = RawMysql {
        databases: std::mem::take(&mut s.databases),
        defaults_file: s.defaults_file.take(),
        socket: s.socket.take(),
        user: s.user.take(),
        dump_command: s.dump_command.take(),
        client_command: s.client_command.take(),
        verify: s.verify.take(),
        users: s.users.take(),
    };
    let mysql = match kind {
        SourceKind::Mysql => {
            if !s.paths.is_empty() || !s.exclude.is_empty() {
                return Err(format!(
                    "{ctx}: a mysql source has no paths or exclude; list databases = [...] instead"
                ));
            }
            Some(validate_mysql(&ctx, raw_mysql)?)
        }
        SourceKind::Files => {
            if !raw_mysql.is_empty() {
                return Err(format!(
                    "{ctx}: databases, defaults_file, socket, user, dump_command, client_command, verify and users apply to kind = \"mysql\" only"
                ));
            }
            None
        }
    };
    let nginx = (s.nginx_test.unwrap_or(preset) && kind == SourceKind::Files).then(|| NginxCheck {
        command: s
            .nginx_command
            .clone()
            .unwrap_or_else(|| PathBuf::from("nginx")),
        conf: s.nginx_conf.clone(),
        prefix: s.nginx_prefix.clone(),
    });
    if kind == SourceKind::Files && s.paths.is_empty() {
        return Err(format!(
            "{ctx}: paths is empty; list at least one absolute directory"
        ));
    }
    let mut seen = HashSet::new();
    for p in &s.paths {
        if !p.is_absolute() {
            return Err(format!(
                "{ctx}: path {} is relative; source paths must be absolute",
                p.display()
            ));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("{ctx}: path {} must not contain '..'", p.display()));
        }
        if !seen.insert(p.clone()) {
            return Err(format!("{ctx}: path {} is listed twice", p.display()));
        }
    }
    let interval_text = s.interval.as_deref().unwrap_or(DEFAULT_INTERVAL);
    let interval = lifeboat_common::clock::parse_duration(interval_text)
        .map_err(|e| format!("{ctx}: interval: {e}"))?;
    if interval.is_zero() {
        return Err(format!("{ctx}: interval must be more than zero"));
    }
    let chunker = s.chunker.unwrap_or(match kind {
        SourceKind::Files => ChunkerParams::FILES,
        SourceKind::Mysql => ChunkerParams::DUMPS,
    });
    chunker
        .validate()
        .map_err(|e| format!("{ctx}: chunker: {e}"))?;
    let excludes = PathPatterns::new(&s.exclude).map_err(|e| format!("{ctx}: exclude: {e}"))?;
    let dump_files = match (&s.dump_files, kind) {
        (Some(p), SourceKind::Files) => p.clone(),
        (None, SourceKind::Files) => DEFAULT_DUMP_FILES.iter().map(|p| p.to_string()).collect(),
        (Some(_), SourceKind::Mysql) => {
            return Err(format!(
                "{ctx}: dump_files is for files sources; a mysql source always chunks as a dump"
            ));
        }
        (None, SourceKind::Mysql) => Vec::new(),
    };
    let dump_files =
        PathPatterns::new(&dump_files).map_err(|e| format!("{ctx}: dump_files: {e}"))?;
    Ok(SourceConfig {
        name: s.name,
        kind,
        paths: s.paths.iter().map(|p| normalize(p)).collect(),
        excludes,
        interval,
        chunker,
        dump_files,
        mysql,
        nginx,
    })
}

/// Drops `.` components and trailing slashes (`/var/www/` → `/var/www`).
fn normalize(p: &Path) -> PathBuf {
    p.components().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup(body: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["ca.pem", "agent.pem", "agent.key", "master.key"] {
            fs::write(dir.path().join(f), "x").expect("write");
        }
        let p = dir.path().join("agent.toml");
        fs::write(&p, body).expect("write config");
        (dir, p)
    }

    const BASE: &str = r#"
state_dir = "state"
master_key = "master.key"
[controller]
address = "https://127.0.0.1:7443"
ca = "ca.pem"
cert = "agent.pem"
key = "agent.key"
"#;

    fn load(body: &str) -> Result<AgentConfig, ConfigError> {
        let (_d, p) = setup(body);
        let raw: RawConfig = load_toml(&p)?;
        AgentConfig::validate(&p, raw, None)
    }

    #[test]
    fn valid_config_resolves_relative_paths_and_defaults() {
        let body = format!(
            "{BASE}[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [\"/var/www/\", \"/etc/nginx\"]\nexclude = [\"*.swp\"]\n"
        );
        let (dir, p) = setup(&body);
        let raw: RawConfig = load_toml(&p).expect("parse");
        let c =
            AgentConfig::validate(&p, raw, Some("https://10.0.0.1:7443".into())).expect("valid");
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.controller.ca, dir.path().join("ca.pem"));
        assert_eq!(c.controller.address, "https://10.0.0.1:7443");
        assert_eq!(c.zstd_level, DEFAULT_ZSTD_LEVEL);
        assert_eq!(c.controller.server_name, DEFAULT_SERVER_NAME);
        let s = c.source("web").expect("source");
        assert_eq!(s.paths[0], PathBuf::from("/var/www"));
        assert_eq!(s.interval, Duration::from_secs(3600));
        assert_eq!(s.chunker, ChunkerParams::FILES);
        assert_eq!(s.dump_files.patterns(), ["*.sql"], "default dump_files");
        assert_eq!(
            s.chunker_for(Path::new("/var/www/backup/shop.sql")),
            ChunkerParams::DUMPS
        );
        assert_eq!(
            s.chunker_for(Path::new("/var/www/index.html")),
            ChunkerParams::FILES
        );
        assert!(
            c.source("db")
                .expect_err("unknown")
                .to_string()
                .contains("web")
        );
    }

    #[test]
    fn dump_files_can_be_set_or_emptied_and_only_for_files_sources() {
        let files = |extra: &str| {
            format!("{BASE}[[source]]\nname = \"w\"\nkind = \"files\"\npaths = [\"/x\"]\n{extra}")
        };
        let c = load(&files("dump_files = []\n")).expect("valid");
        assert_eq!(
            c.source("w").expect("w").chunker_for(Path::new("/x/a.sql")),
            ChunkerParams::FILES
        );
        let c = load(&files("dump_files = [\"*.dump\", \"/x/db/*\"]\n")).expect("valid");
        let s = c.source("w").expect("w");
        assert_eq!(
            s.chunker_for(Path::new("/x/db/t.csv")),
            ChunkerParams::DUMPS
        );
        assert_eq!(s.chunker_for(Path::new("/x/a.dump")), ChunkerParams::DUMPS);
        assert!(load(&files("dump_files = [\"[\"]\n")).is_err());
    }

    #[test]
    fn misspelt_key_is_named() {
        let e = load(&BASE.replace("state_dir", "stat_dir"))
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("stat_dir") && e.contains("agent.toml"), "{e}");
        let body = format!(
            "{BASE}[[source]]\nname = \"w\"\nkind = \"files\"\npaths = [\"/x\"]\nexcludes = []\n"
        );
        let e = load(&body).expect_err("must fail").to_string();
        assert!(e.contains("excludes"), "{e}");
    }

    #[test]
    fn missing_files_are_named_with_their_path() {
        let (dir, p) = setup(BASE);
        fs::remove_file(dir.path().join("master.key")).expect("rm");
        let raw: RawConfig = load_toml(&p).expect("parse");
        let e = AgentConfig::validate(&p, raw, None)
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("master.key") && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn bad_sources_are_rejected() {
        let src = |extra: &str| format!("{BASE}[[source]]\nname = \"web\"\n{extra}\n");
        let cases = [
            (src("kind = \"tape\"\npaths = [\"/x\"]"), "unknown kind"),
            (src("kind = \"files\"\npaths = [\"var/www\"]"), "relative"),
            (
                src("kind = \"files\"\npaths = [\"/x\"]\ninterval = \"5y\""),
                "interval",
            ),
            (
                src("kind = \"files\"\npaths = [\"/x\"]\nchunker = { min = 1, avg = 2, max = 3 }"),
                "chunker",
            ),
            (
                format!(
                    "{}{}",
                    src("kind = \"files\"\npaths = [\"/x\"]"),
                    "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [\"/y\"]\n"
                ),
                "duplicate",
            ),
            (
                src("kind = \"files\"\npaths = [\"/x\"]\nexclude = [\"a[\"]"),
                "exclude",
            ),
        ];
        for (body, want) in cases {
            let e = load(&body).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn example_configs_in_deploy_parse() {
        // The runtime value, as in common/tests/golden.rs.
        let dir =
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let deploy = Path::new(&dir).join("../deploy");
        for name in ["agent.example.toml", "nginx-preset.toml"] {
            let raw: RawConfig = load_toml(&deploy.join(name)).expect(name);
            assert!(!raw.source.is_empty(), "{name}");
            for s in raw.source {
                validate_source(s).expect(name);
            }
        }
    }

    #[test]
    fn excludes_match_names_and_absolute_paths() {
        let ex = PathPatterns::new(&[
            "*.swp".into(),
            "/var/www/*/tmp".into(),
            "/var/www/**/*.log".into(),
        ])
        .expect("compile");
        assert!(ex.matches(Path::new("/var/www/a/.x.swp")));
        assert!(ex.matches(Path::new("/var/www/site/tmp")));
        assert!(!ex.matches(Path::new("/var/www/a/b/tmp")));
        assert!(ex.matches(Path::new("/var/www/a/b/c.log")));
        assert!(!ex.matches(Path::new("/var/www/index.html")));
    }
}
