//! Writing one entry: files and symlinks go to a temporary name in the target directory and are
//! renamed into place, so a crash or a damaged chunk never leaves a partial file under its real
//! name. Metadata (owner, mode, mtime) is applied to the temporary name before the rename. Files
//! are not `fsync`ed here: the caller syncs everything written once at the end. A file larger
//! than a restore unit is written with `O_DIRECT` where the filesystem allows it
//! ([`super::direct`]); smaller files go through the page cache, their writeback started after
//! each file or batch.
//!
//! Owner changes need root: `lchown` failing with EPERM while not running as root is ignored
//! (debug log); any other failure is an error. An existing regular file with the same size and
//! mtime is re-chunked with the manifest's chunker parameters; if its chunk ids equal the
//! manifest's, it is kept and only its metadata is fixed.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::{DataKeys, fill_random};
use lifeboat_common::manifest::{ChunkList, Entry};
use tracing::debug;

use super::ahead::{self, Ahead, Batch, Batches, Fetch};
use super::budget::Budget;
use super::direct::LargeFile;
use super::fetch::read_verified;
use super::unreadable_entry;
use crate::chunking::for_each_chunk;
use crate::error::AgentError;
use crate::remote::Remote;

/// Prefix of temporary names; leftovers from a crash are removed by `--delete`.
pub const TMP_PREFIX: &str = ".lifeboat-tmp-";

/// Whether this process runs as root (owner of `/proc/self` is the effective uid).
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A fresh temporary path beside `target`.
pub fn temp_path(target: &Path) -> PathBuf {
    let mut r = [0u8; 8];
    fill_random(&mut r);
    target.with_file_name(format!("{TMP_PREFIX}{}", hex::encode(r)))
}

fn io_err(what: &'static str, path: &Path) -> impl Fn(io::Error) -> AgentError {
    let path = path.to_owned();
    move |e| AgentError::io(what, &path, e)
}

/// Applies owner, then mode (chown may clear setuid bits), then mtime. `symlink`: no mode, and
/// times set on the link itself.
pub fn apply_metadata(
    path: &Path,
    e: &Entry,
    is_symlink: bool,
    as_root: bool,
) -> Result<(), AgentError> {
    owner_set(lchown(path, Some(e.uid), Some(e.gid)), path, as_root)?;
    let t = FileTime::from_unix_time(e.mtime_sec, e.mtime_nsec);
    if is_symlink {
        filetime::set_symlink_file_times(path, t, t)
            .map_err(io_err("cannot set the mtime of", path))
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(e.mode))
            .map_err(io_err("cannot set the mode of", path))?;
        filetime::set_file_times(path, t, t).map_err(io_err("cannot set the mtime of", path))
    }
}

/// The outcome of changing `path`'s owner: refused while not running as root, it is left as is
/// (debug log); any other failure is an error.
fn owner_set(res: io::Result<()>, path: &Path, as_root: bool) -> Result<(), AgentError> {
    match res {
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied && !as_root => {
            debug!(path = %path.display(), "not root: owner left as is");
            Ok(())
        }
        Err(err) => Err(AgentError::io("cannot set the owner of", path, err)),
        Ok(()) => Ok(()),
    }
}

/// [`apply_metadata`] for a file the restore has open: through its descriptor (`fchown`,
/// `fchmod`, `futimens`), so no path is looked up again (three lookups and an extra open per
/// file before) and nothing another process puts at `tmp` meanwhile is touched. `tmp` only
/// names the file in errors.
fn apply_file_metadata(
    file: &File,
    tmp: &Path,
    e: &Entry,
    as_root: bool,
) -> Result<(), AgentError> {
    let owner = std::os::unix::fs::fchown(file, Some(e.uid), Some(e.gid));
    owner_set(owner, tmp, as_root)?;
    file.set_permissions(fs::Permissions::from_mode(e.mode))
        .map_err(io_err("cannot set the mode of", tmp))?;
    let t = FileTime::from_unix_time(e.mtime_sec, e.mtime_nsec);
    filetime::set_file_handle_times(file, Some(t), Some(t))
        .map_err(io_err("cannot set the mtime of", tmp))
}

/// Whether the existing file at `target` already holds the entry's contents (`list`): the
/// chunking stops at the first chunk that differs.
pub fn is_unchanged(
    target: &Path,
    e: &Entry,
    list: &ChunkList,
    keys: &DataKeys,
    params: ChunkerParams,
) -> bool {
    let Ok(m) = fs::symlink_metadata(target) else {
        return false;
    };
    if !m.is_file()
        || m.len() != e.size
        || m.mtime() != e.mtime_sec
        || m.mtime_nsec() != i64::from(e.mtime_nsec)
    {
        return false;
    }
    let Ok(f) = File::open(target) else {
        return false;
    };
    let mut want = list.reader();
    let res = for_each_chunk(f, params, keys.chunker_seed(), |c: Vec<u8>| {
        match want.next() {
            Some(Ok((id, _))) if id == keys.chunk_id(&c) => Ok(()),
            _ => Err(io::Error::other("differs")),
        }
    });
    res.is_ok() && want.next().is_none()
}

/// Removes whatever is at `target` if it is a directory (a file or link replaces it).
pub fn clear_dir_in_the_way(target: &Path) -> Result<(), AgentError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(target)
            .map_err(io_err("cannot remove directory in the way at", target)),
        _ => Ok(()),
    }
}

/// Writes a file entry to `target` via a temporary name. Returns bytes written.
pub async fn write_file<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    budget: &Budget,
    e: &Entry,
    list: &ChunkList,
    target: &Path,
    as_root: bool,
) -> Result<u64, AgentError> {
    let tmp = temp_path(target);
    let res = write_file_inner(remote, keys, budget, (e, list), target, &tmp, as_root).await;
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

async fn write_file_inner<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    budget: &Budget,
    (e, list): (&Entry, &ChunkList),
    target: &Path,
    tmp: &Path,
    as_root: bool,
) -> Result<u64, AgentError> {
    let mut file = LargeFile::new(create_temp(tmp)?, e.size);
    let what = format!("file {}", target.display());
    // Smaller batches than a unit, cut from the list as they are started, several fetched and
    // verified ahead while the current one is written ([`super::ahead`]), each holding its
    // bytes of the restore's budget until it is written ([`super::budget`]).
    let what = &what;
    let batches = Batches::new(list, ahead::BATCH_IDS, ahead::BATCH_BYTES).map(|b| match b {
        Ok(b) => {
            let bytes = b.bytes;
            let fetch = Box::pin(async move {
                let held = budget.take(b.bytes).await?;
                let plain = read_verified(remote, keys, &b.ids, what).await?;
                Ok((b, plain, held))
            }) as Fetch<'_, _>;
            (bytes, fetch)
        }
        Err(e) => (0, Box::pin(std::future::ready(Err(e))) as Fetch<'_, _>),
    });
    let mut batches = Ahead::new(batches);
    while let Some(fetched) = batches.next().await {
        let (batch, plain, held) = fetched?;
        let write = write_batch(file, batch, plain, tmp);
        file = batches.beside(write).await?;
        drop(held);
    }
    let written = file.written();
    let file = file
        .finish()
        .map_err(|err| AgentError::io("cannot write", tmp, err))?;
    finish(file, written, e, tmp, target, as_root)
}

/// Writes a file entry to `target` via a temporary name from plaintexts already fetched and
/// verified (blocking). Returns bytes written.
pub fn write_file_from(
    plain: &HashMap<ChunkId, Vec<u8>>,
    e: &Entry,
    list: &ChunkList,
    target: &Path,
    as_root: bool,
) -> Result<u64, AgentError> {
    let tmp = temp_path(target);
    let res = create_temp(&tmp).and_then(|mut file| {
        let chunks = list.reader().map(|c| c.map_err(unreadable_entry));
        let n = write_chunks(&mut file, chunks, plain, &tmp)?;
        start_writeback(&file, 0, n);
        finish(file, n, e, &tmp, target, as_root)
    });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn create_temp(tmp: &Path) -> Result<File, AgentError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err("cannot create temporary file", tmp))
}

/// Checks the length, applies metadata and renames into place. No `fsync` here: the restore
/// syncs every written file and directory once at the end (see `files::sync_all`).
fn finish(
    file: File,
    written: u64,
    e: &Entry,
    tmp: &Path,
    target: &Path,
    as_root: bool,
) -> Result<u64, AgentError> {
    if written != e.size {
        return Err(AgentError::Invalid(format!(
            "wrote {written} bytes, the manifest says {}",
            e.size
        )));
    }
    apply_file_metadata(&file, tmp, e, as_root)?;
    drop(file);
    clear_dir_in_the_way(target)?;
    fs::rename(tmp, target).map_err(io_err("cannot rename into place", target))?;
    Ok(written)
}

/// Asks the kernel to start writing `len` bytes from `offset` of `file` to disk now
/// (`POSIX_FADV_DONTNEED` starts writeback of the range's dirty pages without waiting for it,
/// and drops its pages that are already clean). Without it a restore of a GiB or two stays
/// below the kernel's background-writeback threshold (10% of memory) and the final `syncfs`
/// writes everything while nothing else runs; with it the disk writes while the next files
/// are decrypted. Advice only: a failure here changes nothing the final sync does not check.
fn start_writeback(file: &File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Writes one batch's chunks in order, after the file's bytes so far, on a blocking thread.
async fn write_batch(
    mut file: LargeFile,
    batch: Batch,
    plain: HashMap<ChunkId, Vec<u8>>,
    tmp: &Path,
) -> Result<LargeFile, AgentError> {
    let tmp = tmp.to_owned();
    tokio::task::spawn_blocking(move || {
        let offset = file.written();
        let chunks = batch.ids.into_iter().zip(batch.sizes).map(Ok);
        let n = write_chunks(&mut file, chunks, &plain, &tmp)?;
        if !file.is_direct() {
            start_writeback(file.file(), offset, n);
        }
        Ok(file)
    })
    .await
    .map_err(|e| AgentError::Worker(e.to_string()))?
}

/// Writes `chunks` (ids and sizes) in order from `plain`. A chunk whose plaintext length is
/// not the manifest's size for it is refused before it is written (a hostile manifest cannot
/// make a file longer, or shorter, than it declares).
fn write_chunks(
    file: &mut impl Write,
    chunks: impl Iterator<Item = Result<(ChunkId, u32), AgentError>>,
    plain: &HashMap<ChunkId, Vec<u8>>,
    tmp: &Path,
) -> Result<u64, AgentError> {
    let mut n = 0u64;
    for chunk in chunks {
        let (id, size) = chunk?;
        let data = plain.get(&id).ok_or_else(|| {
            AgentError::Invalid(format!(
                "chunk {} was not returned by the controller",
                id.short()
            ))
        })?;
        let want = u64::from(size);
        if data.len() as u64 != want {
            return Err(AgentError::Invalid(format!(
                "chunk {} holds {} bytes, the manifest says {want}",
                id.short(),
                data.len()
            )));
        }
        file.write_all(data)
            .map_err(|e| AgentError::io("cannot write", tmp, e))?;
        n += data.len() as u64;
    }
    Ok(n)
}

/// Creates a symlink entry at `target` via a temporary name.
pub fn write_symlink(e: &Entry, target: &Path, as_root: bool) -> Result<(), AgentError> {
    use std::os::unix::ffi::OsStrExt;
    let tmp = temp_path(target);
    let link_to = Path::new(std::ffi::OsStr::from_bytes(&e.symlink_target));
    let res = symlink(link_to, &tmp)
        .map_err(io_err("cannot create symlink", &tmp))
        .and_then(|()| apply_metadata(&tmp, e, true, as_root))
        .and_then(|()| clear_dir_in_the_way(target))
        .and_then(|()| {
            fs::rename(&tmp, target).map_err(io_err("cannot rename into place", target))
        });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}
