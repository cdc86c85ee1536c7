//! Walking a source's roots: which entries a snapshot holds.
//!
//! Symlinks are never followed (`symlink_metadata`, `read_link`); directory entries are sorted
//! by name bytes, so two walks of the same tree give the same order. Directories (also empty
//! ones), regular files and symlinks are recorded; sockets, fifos and devices are skipped with a
//! debug note. PathPatterns (see [`crate::config::PathPatterns`]) apply below each root, and an excluded
//! directory is not descended into. Anything that cannot be read (a root that is missing, a
//! directory that cannot be listed, a symlink whose target cannot be read) is reported in
//! `unreadable` and skipped; the walk goes on.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lifeboat_common::manifest::EntryKind;
use serde::Serialize;
use tracing::debug;

use crate::config::PathPatterns;

/// An input that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub path: String,
    pub error: String,
}

impl Unreadable {
    pub fn new(path: &Path, error: impl ToString) -> Self {
        Unreadable {
            path: path.display().to_string(),
            error: error.to_string(),
        }
    }
}

/// Metadata recorded for an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_ns: i64,
    pub inode: u64,
    pub size: u64,
}

impl Stat {
    pub fn from_metadata(m: &Metadata) -> Self {
        Stat {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime_sec: m.mtime(),
            mtime_nsec: u32::try_from(m.mtime_nsec()).unwrap_or(0),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
            inode: m.ino(),
            size: m.size(),
        }
    }

    pub fn mtime_ns(&self) -> i64 {
        self.mtime_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(self.mtime_nsec))
    }
}

/// One entry found by the walk. A backup keeps them in a scratch file, not in memory
/// ([`super::pass_files`]); no absolute path is recorded, [`Self::abs`] rebuilds it when a file
/// is opened or named.
#[derive(Clone, Debug)]
pub struct WalkItem {
    pub root: u32,
    /// Relative to the root, `/`-separated; empty for the root itself.
    pub rel: Vec<u8>,
    pub kind: EntryKind,
    pub stat: Stat,
    pub symlink_target: Vec<u8>,
}

impl WalkItem {
    /// The entry's absolute path, as the walk found it: root `self.root` of `roots` (the roots
    /// the walk was given, in order) joined with `rel`.
    pub fn abs(&self, roots: &[PathBuf]) -> PathBuf {
        let root = roots
            .get(self.root as usize)
            .map_or(Path::new(""), PathBuf::as_path);
        if self.rel.is_empty() {
            root.to_owned()
        } else {
            root.join(OsStr::from_bytes(&self.rel))
        }
    }
}

/// Walks every root in order, handing each entry to `sink` as it is found (the backup appends
/// them to a scratch file: [`super::pass_files`]); returns what could not be read. A `sink`
/// error stops the walk.
pub fn walk(
    roots: &[PathBuf],
    excludes: &PathPatterns,
    sink: &mut dyn FnMut(WalkItem) -> io::Result<()>,
) -> io::Result<Vec<Unreadable>> {
    let mut out = Walker {
        sink,
        unreadable: Vec::new(),
    };
    for (i, root) in roots.iter().enumerate() {
        let meta = match fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) => {
                out.unreadable.push(Unreadable::new(root, e));
                continue;
            }
        };
        visit(i as u32, root, Vec::new(), &meta, excludes, &mut out)?;
    }
    Ok(out.unreadable)
}

/// Where a walk puts what it finds.
struct Walker<'a> {
    sink: &'a mut dyn FnMut(WalkItem) -> io::Result<()>,
    unreadable: Vec<Unreadable>,
}

fn visit(
    root: u32,
    abs: &Path,
    rel: Vec<u8>,
    meta: &Metadata,
    excludes: &PathPatterns,
    out: &mut Walker<'_>,
) -> io::Result<()> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        debug!(path = %abs.display(), "skipping special file (socket, fifo or device)");
        return Ok(());
    };
    let mut symlink_target = Vec::new();
    if kind == EntryKind::Symlink {
        match fs::read_link(abs) {
            Ok(t) => symlink_target = t.as_os_str().as_bytes().to_vec(),
            Err(e) => {
                out.unreadable.push(Unreadable::new(abs, e));
                return Ok(());
            }
        }
    }
    let mut stat = Stat::from_metadata(meta);
    if kind != EntryKind::File {
        stat.size = 0;
    }
    (out.sink)(WalkItem {
        root,
        rel: rel.clone(),
        kind,
        stat,
        symlink_target,
    })?;
    if kind == EntryKind::Dir {
        visit_children(root, abs, &rel, excludes, out)?;
    }
    Ok(())
}

fn visit_children(
    root: u32,
    abs: &Path,
    rel: &[u8],
    excludes: &PathPatterns,
    out: &mut Walker<'_>,
) -> io::Result<()> {
    let mut names: Vec<Vec<u8>> = match fs::read_dir(abs) {
        Ok(rd) => {
            let mut names = Vec::new();
            for entry in rd {
                match entry {
                    Ok(e) => names.push(e.file_name().as_bytes().to_vec()),
                    Err(e) => out.unreadable.push(Unreadable::new(abs, e)),
                }
            }
            names
        }
        Err(e) => {
            out.unreadable.push(Unreadable::new(abs, e));
            return Ok(());
        }
    };
    names.sort();
    for name in names {
        let child = abs.join(OsStr::from_bytes(&name));
        if excludes.matches(&child) {
            debug!(path = %child.display(), "excluded");
            continue;
        }
        let meta = match fs::symlink_metadata(&child) {
            Ok(m) => m,
            Err(e) => {
                out.unreadable.push(Unreadable::new(&child, e));
                continue;
            }
        };
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(&name);
        visit(root, &child, child_rel, &meta, excludes, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn walks_sorted_without_following_symlinks_and_applies_excludes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("www");
        fs::create_dir_all(root.join("b/empty")).expect("mkdir");
        fs::create_dir_all(root.join("cache/x")).expect("mkdir");
        fs::write(root.join("a.txt"), b"a").expect("write");
        fs::write(root.join("b/.x.swp"), b"s").expect("write");
        fs::write(root.join("cache/x/big"), b"c").expect("write");
        symlink("/etc", root.join("link")).expect("symlink");
        let ex =
            PathPatterns::new(&["*.swp".into(), format!("{}/cache", root.display())]).expect("ex");
        let missing = dir.path().join("missing");
        let mut items = Vec::new();
        let unreadable = walk(&[root.clone(), missing.clone()], &ex, &mut |i| {
            items.push(i);
            Ok(())
        })
        .expect("walk");
        let rels: Vec<String> = items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.rel).into_owned())
            .collect();
        assert_eq!(rels, ["", "a.txt", "b", "b/empty", "link"]);
        let roots = [root.clone(), missing.clone()];
        let abs: Vec<PathBuf> = items.iter().map(|i| i.abs(&roots)).collect();
        assert_eq!(
            abs,
            ["", "a.txt", "b", "b/empty", "link"].map(|p| if p.is_empty() {
                root.clone()
            } else {
                root.join(p)
            })
        );
        let link = items.iter().find(|i| i.rel == b"link").expect("link");
        assert_eq!(link.kind, EntryKind::Symlink);
        assert_eq!(link.symlink_target, b"/etc");
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].path, missing.display().to_string());
    }
}
