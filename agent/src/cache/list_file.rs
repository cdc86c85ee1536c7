//! A long cached chunk list in a file of its own (value version 3, [`super::value`]).
//!
//! A list of more than [`SEGMENT_RECORDS`] chunks is written to `lists/<hash of its key>` in the
//! cache's directory, and its value in sled holds the BLAKE3 digest of its records. sled's own
//! pages stay in the agent's memory until the page cache's shard that holds them has seen 64
//! accesses; a file's pages are the kernel's, so reading a 3 GiB dump's list (330,000 chunks,
//! 12 MB) costs the agent one 64 KiB buffer.
//!
//! Failure modes, all a miss (the file is read again), never a wrong list: the file missing,
//! of another length than the value's count, or whose records do not hash to the value's digest
//! (a crash between the file's rename and the value's write, or another key's file under a
//! colliding name) or do not add up to the file's size. A file is written to a temporary name
//! and renamed over the old one; nothing is synced (a cache). The files are moved aside with
//! the database when it is found corrupt.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tracing::debug;

use super::value::{CHUNK_RECORD, DIGEST_LEN, SEGMENT_RECORDS, sizes};

/// Bytes read at once (whole records, ~64 KiB).
const PIECE: usize = SEGMENT_RECORDS * CHUNK_RECORD;

/// The file of the list cached under `key`, in `lists`.
pub fn path(lists: &Path, key: &[u8]) -> PathBuf {
    let h = blake3::hash(key);
    lists.join(hex::encode(&h.as_bytes()[..16]))
}

/// A list being written: to a temporary name, hashed as it goes.
pub struct ListFile {
    tmp: PathBuf,
    path: PathBuf,
    out: io::BufWriter<File>,
    hasher: blake3::Hasher,
}

impl ListFile {
    pub fn create(lists: &Path, key: &[u8]) -> io::Result<Self> {
        fs::create_dir_all(lists)?;
        let path = path(lists, key);
        let tmp = path.with_extension("tmp");
        let out = io::BufWriter::with_capacity(PIECE, File::create(&tmp)?);
        Ok(ListFile {
            tmp,
            path,
            out,
            hasher: blake3::Hasher::new(),
        })
    }

    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        self.hasher.update(records);
        self.out.write_all(records)
    }

    /// Puts the file in place (over the key's previous one); its digest.
    pub fn finish(self) -> io::Result<[u8; DIGEST_LEN]> {
        let file = self
            .out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        Ok(*self.hasher.finalize().as_bytes())
    }

    /// Gives up on the list: the temporary file is removed.
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Hands the list of `count` chunks cached under `key` to `f`, [`PIECE`] bytes at a time.
/// `Ok(false)`: a miss (see the module docs); `Err`: `f`'s error.
pub fn read(
    lists: &Path,
    key: &[u8],
    (count, digest, size): (u64, &[u8], u64),
    f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    let path = path(lists, key);
    let miss = |why: &str| {
        debug!(list = %path.display(), why, "a cached chunk list cannot be used; treating as a miss");
        Ok(false)
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(_) => return miss("cannot open it"),
    };
    let want = count * CHUNK_RECORD as u64;
    if file.metadata().map(|m| m.len()).ok() != Some(want) {
        return miss("its length is not the value's");
    }
    let (mut hasher, mut total, mut left) = (blake3::Hasher::new(), 0u64, want);
    let mut buf = vec![0u8; PIECE];
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        if file.read_exact(&mut buf[..n]).is_err() {
            return miss("cannot read it");
        }
        hasher.update(&buf[..n]);
        total += sizes(&buf[..n]);
        f(&buf[..n])?;
        left -= n as u64;
    }
    if hasher.finalize().as_bytes() != digest || total != size {
        return miss("its records are not the value's");
    }
    Ok(true)
}

/// Removes the list cached under `key`, if there is one.
pub fn remove(lists: &Path, key: &[u8]) {
    let _ = fs::remove_file(path(lists, key));
}
