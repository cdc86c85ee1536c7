//! `restore --delete`: removes what is under a restored root but not in the snapshot.
//!
//! The walk never follows symlinks (a link is removed or kept as a link, never entered). Paths
//! matching the source's current excludes are kept and not descended into, because the snapshot
//! could not have held them. Everything else not listed in the manifest goes, so a web shell an
//! attacker dropped into the web root does not survive the restore.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tracing::info;

use crate::config::PathPatterns;
use crate::error::AgentError;

/// One tree to clean: the target directory, the original path it stands for, and the relative
/// paths (from the root) that the snapshot holds.
pub struct DeleteScope<'a> {
    pub target: &'a Path,
    pub original: &'a Path,
    /// Relative path of `target` below its root ("" for the root itself).
    pub rel: Vec<u8>,
    pub keep: &'a HashSet<Vec<u8>>,
    pub excludes: &'a PathPatterns,
}

/// Removes extraneous entries below `scope.target`; returns how many paths were removed (a
/// removed directory counts once).
pub fn delete_extraneous(scope: &DeleteScope<'_>) -> Result<u64, AgentError> {
    let mut deleted = 0;
    clean_dir(scope, scope.target, &scope.rel, &mut deleted)?;
    Ok(deleted)
}

fn clean_dir(
    scope: &DeleteScope<'_>,
    dir: &Path,
    rel: &[u8],
    deleted: &mut u64,
) -> Result<(), AgentError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(()),
    }
    let rd = fs::read_dir(dir).map_err(|e| AgentError::io("cannot list", dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        names.push(
            entry
                .map_err(|e| AgentError::io("cannot list", dir, e))?
                .file_name(),
        );
    }
    names.sort();
    for name in names {
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(name.as_bytes());
        let original = scope.original.join(OsStr::from_bytes(&child_rel));
        if scope.excludes.matches(&original) {
            continue;
        }
        let path = dir.join(&name);
        if scope.keep.contains(&child_rel) {
            clean_dir(scope, &path, &child_rel, deleted)?;
            continue;
        }
        let meta =
            fs::symlink_metadata(&path).map_err(|e| AgentError::io("cannot inspect", &path, e))?;
        let res = if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        res.map_err(|e| AgentError::io("cannot delete", &path, e))?;
        info!(path = %original.display(), "deleted: not in the snapshot");
        *deleted += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_extraneous_keeps_listed_and_excluded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path();
        fs::create_dir_all(t.join("site/uploads")).expect("mkdir");
        fs::write(t.join("site/index.php"), b"ok").expect("write");
        fs::write(t.join("site/shell.php"), b"evil").expect("write");
        fs::write(t.join("site/uploads/x.swp"), b"swap").expect("write");
        fs::create_dir_all(t.join("evil/deep")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", t.join("site/link")).expect("symlink");
        let keep: HashSet<Vec<u8>> = ["site", "site/index.php", "site/uploads"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let ex = PathPatterns::new(&["*.swp".into()]).expect("ex");
        let n = delete_extraneous(&DeleteScope {
            target: t,
            original: Path::new("/var/www"),
            rel: Vec::new(),
            keep: &keep,
            excludes: &ex,
        })
        .expect("delete");
        assert_eq!(n, 3);
        assert!(!t.join("site/shell.php").exists() && !t.join("evil").exists());
        assert!(fs::symlink_metadata(t.join("site/link")).is_err());
        assert!(t.join("site/index.php").exists() && t.join("site/uploads/x.swp").exists());
        assert!(Path::new("/etc").exists());
    }
}
