//! Where a restore writes, and the checks that keep it inside its target root.
//!
//! Each snapshot root `/a/b` is restored to `DIR/a/b` (`--to DIR`) or to `/a/b` (`--in-place`).
//! The trusted base is `DIR`, or the root's parent in place. Before anything is created at a
//! path, every existing component between the base and that path is checked with
//! `symlink_metadata`: it must be a real directory. A symlink or a file in the way refuses the
//! entry, so a manifest (or an attacker who planted links in the target tree) cannot make the
//! restore write through `a -> /etc` into `/etc/passwd`. Missing components are created with
//! mode 0700 and recorded; their final modes are applied at the end.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

/// Where a restore writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Under this directory, each root at its absolute path below it.
    To(PathBuf),
    /// At the original paths.
    InPlace,
}

/// The trusted base and the path of a root below it.
#[derive(Clone, Debug)]
pub struct RootTarget {
    pub base: PathBuf,
    /// Relative to `base` (empty when the root is `/` in place).
    pub rel: PathBuf,
}

impl RootTarget {
    pub fn path(&self) -> PathBuf {
        self.base.join(&self.rel)
    }
}

/// Maps an original absolute root path to its target.
pub fn root_target(target: &Target, root: &Path) -> RootTarget {
    let below_slash: PathBuf = root
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    match target {
        Target::To(dir) => RootTarget {
            base: dir.clone(),
            rel: below_slash,
        },
        Target::InPlace => match (root.parent(), root.file_name()) {
            (Some(parent), Some(name)) => RootTarget {
                base: parent.to_owned(),
                rel: PathBuf::from(name),
            },
            _ => RootTarget {
                base: PathBuf::from("/"),
                rel: PathBuf::new(),
            },
        },
    }
}

/// Why an entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    #[error("{0} is a symlink; refusing to write through it")]
    Symlink(PathBuf),
    #[error("{0} is not a directory")]
    NotDir(PathBuf),
    #[error("cannot check or create {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Checks (and creates, mode 0700) every directory from `base` down to the parent of
/// `base/rel`. Newly created directories are appended to `created`.
pub fn prepare_parents(
    base: &Path,
    rel: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), PathRefused> {
    let comps: Vec<Component> = rel.components().collect();
    let mut cur = base.to_owned();
    for comp in comps.iter().take(comps.len().saturating_sub(1)) {
        let Component::Normal(name) = comp else {
            return Err(PathRefused::NotDir(cur.join(comp.as_os_str())));
        };
        cur.push(name);
        ensure_real_dir(&cur, created)?;
    }
    Ok(())
}

/// Ensures `p` is a real directory (not a symlink), creating it with mode 0700 if missing.
pub fn ensure_real_dir(p: &Path, created: &mut Vec<PathBuf>) -> Result<(), PathRefused> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(PathRefused::Symlink(p.to_owned())),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(PathRefused::NotDir(p.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(0o700)
                .create(p)
                .map_err(|source| PathRefused::Io {
                    path: p.to_owned(),
                    source,
                })?;
            created.push(p.to_owned());
            Ok(())
        }
        Err(source) => Err(PathRefused::Io {
            path: p.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn maps_roots() {
        let t = root_target(&Target::To("/restore".into()), Path::new("/var/www"));
        assert_eq!(t.path(), PathBuf::from("/restore/var/www"));
        let t = root_target(&Target::InPlace, Path::new("/var/www"));
        assert_eq!(
            (t.base.as_path(), t.rel.as_path()),
            (Path::new("/var"), Path::new("www"))
        );
        assert_eq!(
            root_target(&Target::InPlace, Path::new("/")).path(),
            PathBuf::from("/")
        );
    }

    #[test]
    fn refuses_symlinked_and_file_ancestors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        fs::create_dir(base.join("ok")).expect("mkdir");
        symlink(outside.path(), base.join("ok/a")).expect("symlink");
        fs::write(base.join("f"), b"x").expect("write");
        let mut created = Vec::new();
        let e = prepare_parents(base, Path::new("ok/a/x"), &mut created).expect_err("symlink");
        assert!(matches!(e, PathRefused::Symlink(_)), "{e}");
        let e = prepare_parents(base, Path::new("f/x"), &mut created).expect_err("file");
        assert!(matches!(e, PathRefused::NotDir(_)), "{e}");
        prepare_parents(base, Path::new("new/deeper/x"), &mut created).expect("create");
        assert_eq!(created, [base.join("new"), base.join("new/deeper")]);
        assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
    }
}
