//! The file cache: lets a backup skip reading files that have not changed since the last commit.
//!
//! Key: an 8-byte stamp (derived from the chunk-id key and the chunker parameters, so a new
//! master key or new parameters never reuse stale ids) · source name · 0 · root path · 0 ·
//! relative path. Value (version 1): size, mtime ns, ctime ns, inode, then the chunk ids and
//! sizes. A hit requires all four of size, mtime, ctime and inode to match.
//!
//! It is only a cache: the backup sends cached ids through `HaveChunks` like any other, and an
//! id reported missing makes the file be read again. If the sled database cannot be opened, or a
//! value fails to decode, the directory is moved aside to `cache.corrupt-<unix ms>`, a warning
//! says so, and the cache starts empty (the next backup reads every file). If it is merely locked
//! by another agent process, the backup runs without a cache and nothing is moved.
//! Entries are written only after a successful commit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use tracing::{debug, warn};

/// sled's page cache size. A backup reads each file's entry once, in walk order, and writes
/// them once after the commit, so pages are rarely wanted again; what sled keeps grows with the
/// source up to this size (and its heap held ~2× the setting). 1 MiB instead of 4: the 2.5 GiB
/// bench source's no-change backup peaked at 39.3–39.8 MiB instead of 44.8–45.1, the 1% change
/// at 45.3–47.8 instead of 49.9–51.4, with the same wall time (docs/performance.md, session 16).
const CACHE_CAPACITY: u64 = 1 << 20;
/// Entries written per sled batch by [`FileCache::put_all`].
const PUT_SLICE: usize = 256;
const VALUE_VERSION: u8 = 1;

/// What the cache remembers about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub ids: Vec<ChunkId>,
    pub sizes: Vec<u32>,
}

impl CachedFile {
    /// Whether the stat fields match (the ids are then trusted, subject to `HaveChunks`).
    pub fn matches(&self, other: &CachedFile) -> bool {
        self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.inode == other.inode
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(37 + self.ids.len() * (CHUNK_ID_LEN + 4));
        v.push(VALUE_VERSION);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.mtime_ns.to_le_bytes());
        v.extend_from_slice(&self.ctime_ns.to_le_bytes());
        v.extend_from_slice(&self.inode.to_le_bytes());
        v.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for (id, size) in self.ids.iter().zip(&self.sizes) {
            v.extend_from_slice(id.as_bytes());
            v.extend_from_slice(&size.to_le_bytes());
        }
        v
    }

    fn decode(v: &[u8]) -> Option<CachedFile> {
        let (&version, rest) = v.split_first()?;
        if version != VALUE_VERSION || rest.len() < 36 {
            return None;
        }
        let u64_at = |i: usize| {
            rest.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let n = u32::from_le_bytes(rest.get(32..36)?.try_into().ok()?) as usize;
        let body = &rest[36..];
        if body.len() != n.checked_mul(CHUNK_ID_LEN + 4)? {
            return None;
        }
        let mut ids = Vec::with_capacity(n);
        let mut sizes = Vec::with_capacity(n);
        for rec in body.chunks_exact(CHUNK_ID_LEN + 4) {
            ids.push(ChunkId::try_from(&rec[..CHUNK_ID_LEN]).ok()?);
            sizes.push(u32::from_le_bytes(rec[CHUNK_ID_LEN..].try_into().ok()?));
        }
        let f = CachedFile {
            size: u64_at(0)?,
            mtime_ns: u64_at(8)? as i64,
            ctime_ns: u64_at(16)? as i64,
            inode: u64_at(24)?,
            ids,
            sizes,
        };
        (f.sizes.iter().map(|&s| u64::from(s)).sum::<u64>() == f.size).then_some(f)
    }
}

/// Builds a cache key.
pub fn cache_key(stamp: &[u8; 8], source: &str, root: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + source.len() + root.len() + rel.len() + 2);
    k.extend_from_slice(stamp);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(root);
    k.push(0);
    k.extend_from_slice(rel);
    k
}

/// A store of [`CachedFile`]s (sled in production; swappable).
pub trait FileCache: Send + Sync {
    fn get(&self, key: &[u8]) -> Option<CachedFile>;
    /// Records entries after a successful commit, as the iterator yields them. Failures are
    /// logged, never fatal.
    fn put_all(&self, entries: &mut dyn Iterator<Item = (Vec<u8>, CachedFile)>);
}

/// A cache that never hits (used when the real one is unavailable, and for `--no-cache` passes).
pub struct NoCache;

impl FileCache for NoCache {
    fn get(&self, _key: &[u8]) -> Option<CachedFile> {
        None
    }
    fn put_all(&self, _entries: &mut dyn Iterator<Item = (Vec<u8>, CachedFile)>) {}
}

/// The sled-backed cache in `STATE_DIR/cache`.
pub struct SledCache {
    dir: PathBuf,
    db: Mutex<Option<sled::Db>>,
}

fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY)
        .open()
}

fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
        }
        _ => false,
    }
}

/// Moves a broken cache directory aside; returns where it went.
fn move_aside(dir: &Path) -> Option<PathBuf> {
    let name = format!(
        "{}.corrupt-{}",
        dir.file_name()
            .map_or("cache".into(), |n| n.to_string_lossy().into_owned()),
        lifeboat_common::clock::now_unix_ms()
    );
    let to = dir.with_file_name(name);
    match std::fs::rename(dir, &to) {
        Ok(()) => Some(to),
        Err(e) => {
            warn!(cache = %dir.display(), error = %e, "cannot move the broken file cache aside");
            None
        }
    }
}

impl SledCache {
    /// Opens the cache at `dir`, recovering from corruption as described in the module docs.
    /// Returns [`NoCache`] when the cache cannot be used at all.
    pub fn open(dir: &Path) -> Box<dyn FileCache> {
        match open_db(dir) {
            Ok(db) => {
                return Box::new(SledCache {
                    dir: dir.to_owned(),
                    db: Mutex::new(Some(db)),
                });
            }
            Err(e) if is_lock_error(&e) => {
                warn!(cache = %dir.display(), error = %e, "file cache is locked by another agent process; this backup reads every file");
                return Box::new(NoCache);
            }
            Err(e) => {
                let moved = move_aside(dir);
                warn!(cache = %dir.display(), moved_to = ?moved, error = %e, "file cache could not be opened; moved it aside and starting empty (this backup reads every file)");
            }
        }
        match open_db(dir) {
            Ok(db) => Box::new(SledCache {
                dir: dir.to_owned(),
                db: Mutex::new(Some(db)),
            }),
            Err(e) => {
                warn!(cache = %dir.display(), error = %e, "file cache still cannot be opened; running without it");
                Box::new(NoCache)
            }
        }
    }

    /// Replaces a database holding an undecodable value with a fresh, empty one.
    fn recover(&self, slot: &mut Option<sled::Db>) {
        if let Some(db) = slot.take() {
            drop(db);
        }
        let moved = move_aside(&self.dir);
        warn!(cache = %self.dir.display(), moved_to = ?moved, "file cache holds an undecodable value; moved it aside and starting empty");
        match open_db(&self.dir) {
            Ok(db) => *slot = Some(db),
            Err(e) => {
                warn!(cache = %self.dir.display(), error = %e, "cannot re-create the file cache; running without it")
            }
        }
    }
}

impl FileCache for SledCache {
    fn get(&self, key: &[u8]) -> Option<CachedFile> {
        let mut slot = self.db.lock().ok()?;
        let raw = match slot.as_ref()?.get(key) {
            Ok(v) => v?,
            Err(e) => {
                debug!(error = %e, "file cache read failed; treating as a miss");
                return None;
            }
        };
        let decoded = CachedFile::decode(&raw);
        if decoded.is_none() {
            self.recover(&mut slot);
        }
        decoded
    }

    fn put_all(&self, entries: &mut dyn Iterator<Item = (Vec<u8>, CachedFile)>) {
        let Ok(slot) = self.db.lock() else { return };
        let Some(db) = slot.as_ref() else { return };
        // In slices: one sled batch holds all its values in memory until applied, so a single
        // batch of a whole data set's entries grew the agent with the number of files. Entries
        // are independent (each one right on its own), so a crash between slices only leaves
        // fewer of them.
        let mut put_slices = || loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for (k, v) in (&mut *entries).take(PUT_SLICE) {
                batch.insert(k.as_slice(), v.encode());
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            db.apply_batch(batch)?;
        };
        let res = put_slices().and_then(|()| db.flush().map(|_| ()));
        if let Err(e) = res {
            warn!(cache = %self.dir.display(), error = %e, "cannot update the file cache; the next backup reads these files again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(size: u32) -> CachedFile {
        CachedFile {
            size: u64::from(size) * 2,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: -5,
            inode: 42,
            ids: vec![ChunkId([1; 32]), ChunkId([2; 32])],
            sizes: vec![size, size],
        }
    }

    #[test]
    fn values_round_trip_and_garbage_is_rejected() {
        let f = sample(100);
        assert_eq!(CachedFile::decode(&f.encode()), Some(f.clone()));
        let enc = f.encode();
        assert_eq!(CachedFile::decode(&enc[..enc.len() - 1]), None);
        assert_eq!(CachedFile::decode(b"\x09garbage"), None);
        let mut other = f.clone();
        other.inode = 43;
        assert!(!f.matches(&other));
    }

    /// Opens the cache at `dir` once any previous `sled::Db` on it has let go. sled's I/O
    /// threads drop their last handle on its files a moment after the `Db` is dropped, and until
    /// then the directory is locked (`SledCache::open` would run without a cache, as it must
    /// when another agent process holds it). Bounded: a lock still held after 10 s fails.
    fn open_when_free(dir: &Path) -> SledCache {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open_db(dir) {
                Ok(db) => {
                    return SledCache {
                        dir: dir.to_owned(),
                        db: Mutex::new(Some(db)),
                    };
                }
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < until => {
                    std::thread::yield_now();
                }
                Err(e) => panic!("cannot open the cache: {e}"),
            }
        }
    }

    #[test]
    fn hit_and_miss_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cache");
        let key = cache_key(&[0; 8], "web", b"/var/www", b"index.html");
        {
            let c = SledCache::open(&p);
            assert_eq!(c.get(&key), None);
            c.put_all(&mut [(key.clone(), sample(7))].into_iter());
            assert_eq!(c.get(&key), Some(sample(7)));
        }
        let c = open_when_free(&p);
        assert_eq!(c.get(&key), Some(sample(7)));
        assert_eq!(
            c.get(&cache_key(&[1; 8], "web", b"/var/www", b"index.html")),
            None
        );
    }

    #[test]
    fn undecodable_value_moves_the_cache_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cache");
        // The garbage goes in through the cache's own database: a second `sled::Db` on the same
        // directory, dropped just before, can still hold its lock for a moment (its I/O threads
        // finish on their own), and the cache would then open as "locked by another process".
        let c = open_when_free(&p);
        {
            let slot = c.db.lock().expect("lock");
            let db = slot.as_ref().expect("db");
            db.insert(b"k", b"garbage".as_slice()).expect("insert");
            db.flush().expect("flush");
        }
        assert_eq!(c.get(b"k"), None);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("cache.corrupt-")
            })
            .collect();
        assert_eq!(
            aside.len(),
            1,
            "the broken cache is kept aside for inspection"
        );
        c.put_all(&mut [(b"k2".to_vec(), sample(3))].into_iter());
        assert_eq!(c.get(b"k2"), Some(sample(3)), "a fresh cache works");
    }

    #[test]
    fn unopenable_cache_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cache");
        std::fs::write(&p, b"not a directory").expect("write");
        let c = SledCache::open(&p);
        c.put_all(&mut [(b"k".to_vec(), sample(3))].into_iter());
        assert_eq!(c.get(b"k"), Some(sample(3)));
        assert!(p.is_dir());
    }
}
