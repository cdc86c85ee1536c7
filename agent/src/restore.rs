//! Restoring a snapshot of a source, to another directory or in place.
//!
//! Order: resolve the snapshot and verify its manifest ([`fetch`]; its entries kept encoded in a
//! scratch file of the state directory, decoded one at a time below); for each selected entry (walk
//! order, parents first) check the path ([`target`]), then create the directory or the symlink
//! (through a temporary name, [`write`]), or queue the file: queued files are fetched and written
//! many at once ([`files`]), and the queue is flushed before any entry that could disturb a
//! queued file's path, so the result is the one of a walk-order restore. Directory metadata is
//! applied last, deepest first (directories are created 0700 so read-only trees restore), after
//! `--delete` has removed what the snapshot does not hold ([`delete`]), so directory mtimes end
//! up as in the snapshot. Finally the filesystems written to are synced once (`syncfs(2)`,
//! [`files::sync_all`]): a restore that returned success is on disk.
//!
//! Failure modes: an entry whose path would go through a symlink or a file is refused, the rest
//! is restored, and the restore then fails listing the refusals (and skips `--delete`). A file
//! whose chunks cannot be read or verified stops the restore with an error naming the file's
//! original path; its temporary file is removed, so no damaged file is left under its real name.

pub mod ahead;
pub mod budget;
pub mod database;
pub mod delete;
pub mod direct;
pub mod fetch;
pub mod files;
pub mod target;
pub mod write;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{EncodedManifest, Entry, EntryKind, ManifestError, ManifestHeader};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::PathPatterns;
use crate::error::AgentError;
use crate::remote::Remote;
use delete::{DeleteScope, delete_extraneous};
use target::{RootTarget, Target, ensure_real_dir, prepare_parents, root_target};

/// What to restore and where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub source: String,
    /// A snapshot id, a unique prefix, or "latest".
    pub snapshot: String,
    pub target: Target,
    /// Restrict to this original absolute path and below.
    pub path: Option<PathBuf>,
    pub delete: bool,
    /// The source's current excludes (kept by `--delete`).
    pub excludes: PathPatterns,
    /// Where the manifest's entries are kept while restoring ([`crate::scratch`]: the agent's
    /// state directory); `None` keeps them in memory.
    pub scratch_dir: Option<PathBuf>,
}

/// The outcome, as printed by `restore --json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    pub snapshot_id: String,
    pub files_written: u64,
    pub files_unchanged: u64,
    pub bytes_written: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub deleted: u64,
    pub duration_ms: u64,
    /// `nginx -t` (and reload) after restoring nginx configuration in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx: Option<crate::nginx::NginxReport>,
}

/// Restores `opts.snapshot` of `opts.source`.
pub async fn restore<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    opts: &RestoreOptions,
) -> Result<RestoreReport, AgentError> {
    let started = Instant::now();
    let scratch = opts.scratch_dir.as_deref();
    let (info, manifest) =
        fetch::load_manifest(remote, keys, &opts.snapshot, &opts.source, scratch).await?;
    let mut report = restore_manifest(remote, keys, manifest, opts).await?;
    report.snapshot_id = info.id;
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    info!(snapshot = %report.snapshot_id, files_written = report.files_written, files_unchanged = report.files_unchanged, deleted = report.deleted, "restore finished");
    Ok(report)
}

/// The original absolute path of an entry.
pub fn original_path(h: &ManifestHeader, e: &Entry) -> PathBuf {
    let root = h.root_path(e.root);
    if e.path.is_empty() {
        root.to_owned()
    } else {
        root.join(e.rel_path())
    }
}

/// Whether an entry is selected by `--path` (itself, below it, or a directory above it).
fn selected(orig: &Path, kind: EntryKind, filter: Option<&Path>) -> bool {
    filter.is_none_or(|p| orig.starts_with(p) || (kind == EntryKind::Dir && p.starts_with(orig)))
}

/// Restores the entries of an already verified manifest. Entries are decoded one at a time as
/// they are reached ([`EncodedManifest::entries`]): a file's entry moves into its write job and
/// is freed once the file is written, a directory's is kept (without chunks) for its metadata,
/// so what the restore holds per entry is the encoded manifest's ~80 bytes.
pub async fn restore_manifest<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    m: EncodedManifest,
    opts: &RestoreOptions,
) -> Result<RestoreReport, AgentError> {
    if let Target::To(dir) = &opts.target {
        fs::create_dir_all(dir)
            .map_err(|e| AgentError::io("cannot create restore directory", dir, e))?;
    }
    let roots: Vec<RootTarget> = m
        .header
        .roots
        .iter()
        .enumerate()
        .map(|(i, _)| root_target(&opts.target, m.root_path(i as u32)))
        .collect();
    let as_root = write::running_as_root();
    let ctx = files::Ctx {
        remote,
        keys,
        params: chunker_params(&m.header),
        as_root,
        budget: budget::Budget::new(budget::BUDGET_BYTES),
    };
    let mut report = RestoreReport::default();
    let mut created = Vec::new();
    // Restored directories, with their entries (metadata applied last).
    let mut dirs: Vec<(PathBuf, Entry)> = Vec::new();
    let mut refused = Vec::new();
    let mut pending = files::Pending::default();
    let mut written_in = HashSet::new();
    // The directory whose ancestors `prepare_parents` last found to be real directories, for a
    // file. Only this loop changes the tree between two entries (files are renamed into place
    // by a flush, which forgets it, and so does any entry that is not a file: a symlink or
    // directory restored may replace a parent). Saves six `statx` per file of a deep tree.
    let mut checked: Option<PathBuf> = None;
    for listed in m.entries_with_lists() {
        let (e, list) = listed.map_err(unreadable_entry)?;
        let orig = original_path(&m.header, &e);
        if !selected(&orig, e.entry_kind(), opts.path.as_deref()) {
            continue;
        }
        let rt = &roots[e.root as usize];
        let rel = if e.path.is_empty() {
            rt.rel.clone()
        } else {
            rt.rel.join(e.rel_path())
        };
        let dest = rt.base.join(&rel);
        if pending.conflicts(&dest) || pending.is_full() {
            files::flush(&ctx, &mut pending, &mut report, &mut written_in).await?;
            checked = None;
        }
        // The parents of a file in the directory of the entry before it were checked for
        // that entry: nothing has changed them since (see `checked`).
        if checked.as_deref() != dest.parent() || e.entry_kind() != EntryKind::File {
            checked = None;
            if let Err(why) = prepare_parents(&rt.base, &rel, &mut created) {
                warn!(path = %orig.display(), reason = %why, "restore refused entry");
                refused.push(format!("{}: {why}", orig.display()));
                continue;
            }
        }
        if e.entry_kind() == EntryKind::File {
            checked = dest.parent().map(Path::to_owned);
            pending.push(files::FileJob {
                dest,
                orig,
                entry: e,
                list,
            });
            continue;
        }
        match restore_entry(&e, &dest, as_root, &mut report) {
            Ok(true) => dirs.push((dest, e)),
            Ok(false) => {}
            Err(AgentError::Refused(why)) => {
                refused.extend(why.into_iter().map(|w| format!("{}: {w}", orig.display())))
            }
            Err(source) => {
                return Err(AgentError::RestoreFile {
                    path: orig.display().to_string(),
                    source: Box::new(source),
                });
            }
        }
    }
    files::flush(&ctx, &mut pending, &mut report, &mut written_in).await?;
    // Deleting changes directory mtimes, so it runs before directory metadata is applied.
    if opts.delete && refused.is_empty() {
        report.deleted = delete_phase(&m, &roots, opts)?;
    }
    finish_dirs(&mut dirs, &created, as_root)?;
    let synced_dirs = dirs.iter().map(|(p, _)| p.clone()).chain(created).collect();
    files::sync_all(written_in, synced_dirs).await?;
    if !refused.is_empty() {
        return Err(AgentError::Refused(refused));
    }
    Ok(report)
}

/// An entry of a manifest validated when it was loaded, or its chunk list, no longer reads
/// back: the restore's scratch file failing (its error says so), or damaged memory.
pub(crate) fn unreadable_entry(e: ManifestError) -> AgentError {
    AgentError::Invalid(format!(
        "an entry of the manifest, valid when loaded, no longer reads back: {e}"
    ))
}

/// The manifest's chunker parameters (for the unchanged-file check), or the files' default.
fn chunker_params(h: &ManifestHeader) -> ChunkerParams {
    h.chunker
        .as_ref()
        .and_then(|c| c.params())
        .unwrap_or(ChunkerParams::FILES)
}

/// Restores a directory or symlink entry at `dest` (files go through [`files`]); returns
/// whether it is a directory (metadata applied later).
fn restore_entry(
    e: &Entry,
    dest: &Path,
    as_root: bool,
    report: &mut RestoreReport,
) -> Result<bool, AgentError> {
    match e.entry_kind() {
        EntryKind::Dir => {
            ensure_dir_entry(dest)?;
            report.dirs += 1;
            Ok(true)
        }
        EntryKind::Symlink => {
            write::write_symlink(e, dest, as_root)?;
            report.symlinks += 1;
            Ok(false)
        }
        EntryKind::File | EntryKind::Unspecified => Ok(false),
    }
}

/// Makes `dest` a real directory, replacing a symlink or file that is in the way (removing a
/// symlink never touches what it points to).
fn ensure_dir_entry(dest: &Path) -> Result<(), AgentError> {
    if let Ok(m) = fs::symlink_metadata(dest)
        && !m.is_dir()
    {
        fs::remove_file(dest)
            .map_err(|e| AgentError::io("cannot remove what is in the way at", dest, e))?;
    }
    let mut created = Vec::new();
    ensure_real_dir(dest, &mut created).map_err(|why| AgentError::Refused(vec![why.to_string()]))
}

/// Whether `p` is still a real directory (not a symlink): a later entry (overlapping roots) may
/// have replaced a directory by a symlink, and chmod/utimes would follow it out of the target.
fn still_real_dir(p: &Path) -> bool {
    let real = fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if !real {
        warn!(path = %p.display(), "not a directory any more: its metadata is not applied");
    }
    real
}

/// Applies directory metadata deepest first; directories created only as parents get 0755.
/// A path that is no longer a real directory is skipped (never followed).
fn finish_dirs(
    dirs: &mut [(PathBuf, Entry)],
    created: &[PathBuf],
    as_root: bool,
) -> Result<(), AgentError> {
    let listed: HashSet<&Path> = dirs.iter().map(|(p, _)| p.as_path()).collect();
    for p in created
        .iter()
        .rev()
        .filter(|p| !listed.contains(p.as_path()))
        .filter(|p| still_real_dir(p))
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))
            .map_err(|e| AgentError::io("cannot set the mode of", p, e))?;
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, e) in dirs.iter().filter(|(p, _)| still_real_dir(p)) {
        write::apply_metadata(p, e, false, as_root)?;
    }
    Ok(())
}

fn delete_phase(
    m: &EncodedManifest,
    roots: &[RootTarget],
    opts: &RestoreOptions,
) -> Result<u64, AgentError> {
    use std::os::unix::ffi::OsStrExt;
    let mut deleted = 0;
    for (i, rt) in roots.iter().enumerate() {
        let orig_root = m.root_path(i as u32);
        let rel: PathBuf = match opts.path.as_deref() {
            None => PathBuf::new(),
            Some(p) if orig_root.starts_with(p) => PathBuf::new(),
            Some(p) => match p.strip_prefix(orig_root) {
                Ok(r) => r.to_owned(),
                Err(_) => continue,
            },
        };
        let mut keep: HashSet<Vec<u8>> = HashSet::new();
        // Paths only: a large entry's list is left in the scratch file, not decoded.
        for listed in m.entries_with_lists() {
            let (e, _) = listed.map_err(unreadable_entry)?;
            if e.root == i as u32 {
                keep.insert(e.path);
            }
        }
        let rel_bytes = rel.as_os_str().as_bytes().to_vec();
        if !rel_bytes.is_empty() && !keep.contains(&rel_bytes) {
            continue;
        }
        let target = rt.path().join(&rel);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AgentError::io("cannot inspect", &target, e)),
        }
        deleted += delete_extraneous(&DeleteScope {
            target: &target,
            original: orig_root,
            rel: rel_bytes,
            keep: &keep,
            excludes: &opts.excludes,
        })?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
