//! The file cache: lets a backup skip reading files that have not changed since the last commit.
//!
//! Key: an 8-byte stamp (derived from the chunk-id key and the chunker parameters, so a new
//! master key or new parameters never reuse stale ids) · source name · 0 · root path · 0 ·
//! relative path. Value: size, mtime ns, ctime ns, inode, then the file's chunk ids and sizes,
//! or for a list longer than 64 KiB its digest, the list in a file of its own
//! ([`value`], [`list_file`]). A hit requires all four of size, mtime, ctime and inode to match.
//!
//! It is only a cache: the backup sends cached ids through `HaveChunks` like any other, and an
//! id reported missing makes the file be read again. If the sled database cannot be opened, or a
//! value fails to decode, the directory is moved aside to `cache.corrupt-<unix ms>`, a warning
//! says so, and the cache starts empty (the next backup reads every file). If it is merely locked
//! by another agent process, the backup runs without a cache and nothing is moved.
//! Entries are written only after a successful commit.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{debug, warn};

/// sled's page cache size. A backup reads each file's entry once, in walk order, and writes
/// them once after the commit, so pages are rarely wanted again; what sled keeps grows with the
/// source up to this size (and its heap held ~2× the setting). 1 MiB instead of 4: the 2.5 GiB
/// bench source's no-change backup peaked at 39.3–39.8 MiB instead of 44.8–45.1, the 1% change
/// at 45.3–47.8 instead of 49.9–51.4, with the same wall time (docs/performance-history.md,
/// session 16).
const CACHE_CAPACITY: u64 = 1 << 20;
/// Entries written per sled batch by [`FileCache::put_all`].
const PUT_SLICE: usize = 256;

mod list_file;
mod value;

use list_file::ListFile;
pub use value::{CHUNK_RECORD, CacheStat, CachedFile, chunks, record};
use value::{DIGEST_LEN, SEGMENT_RECORDS, encode_inline, encode_listed, segment_key, sizes};

/// Bytes of values a sled batch of [`FileCache::put_all`] holds at most before it is applied
/// (besides [`PUT_SLICE`]): a batch holds all its values in memory until then.
const PUT_BATCH_BYTES: usize = 1 << 20;

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
    /// Hands the whole chunk list of `file` (got for `key`) to `f`, in order, 64 KiB of records
    /// at most at a time. `Ok(false)`: part of it is missing or does not add up to the file's
    /// size (a miss: the file is read); `Err`: `f`'s error.
    fn records(
        &self,
        key: &[u8],
        file: &CachedFile,
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool>;
    /// Records the files `files` yields, after a successful commit. The cache's own failures
    /// are logged, never fatal; `Err` is `files`' error, which ends the update there.
    fn put_all(&self, files: &mut dyn PutSource) -> io::Result<()>;
}

/// The files [`FileCache::put_all`] records, one after the other.
pub trait PutSource {
    /// The next file's key, stat and chunk count; `None` after the last.
    fn next_file(&mut self) -> io::Result<Option<(Vec<u8>, CacheStat, u64)>>;
    /// Appends the current file's next `n` chunk records to `out` (asked in order; what is
    /// not asked for before the next [`PutSource::next_file`] is skipped).
    fn next_records(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()>;
}

/// A cache that never hits (used when the real one is unavailable, and for `--no-cache` passes).
pub struct NoCache;

impl FileCache for NoCache {
    fn get(&self, _key: &[u8]) -> Option<CachedFile> {
        None
    }
    fn records(
        &self,
        _key: &[u8],
        _file: &CachedFile,
        _f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        Ok(false)
    }
    fn put_all(&self, _files: &mut dyn PutSource) -> io::Result<()> {
        Ok(())
    }
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

/// Why [`SledCache::put_files`] stopped.
enum PutFailure {
    /// The files' own source (the backup's scratch file).
    Source(io::Error),
    Cache(sled::Error),
    /// A long list's file.
    List(io::Error),
}

impl From<io::Error> for PutFailure {
    fn from(e: io::Error) -> Self {
        PutFailure::Source(e)
    }
}

impl SledCache {
    /// Segment `i` of the list under `key`, if it is there whole.
    fn segment(&self, key: &[u8], i: u64, records: u64) -> Option<sled::IVec> {
        let slot = self.db.lock().ok()?;
        let v = slot.as_ref()?.get(segment_key(key, i)).ok()??;
        (v.len() as u64 == records * CHUNK_RECORD as u64).then_some(v)
    }

    /// Where the long lists' files are.
    fn lists(&self) -> PathBuf {
        self.dir.join("lists")
    }

    /// Writes `files` in batches; a long list goes to its file first ([`value`] on the order).
    fn put_files(&self, db: &sled::Db, files: &mut dyn PutSource) -> Result<(), PutFailure> {
        let (mut batch, mut n, mut bytes) = (sled::Batch::default(), 0, 0);
        let mut buf = Vec::new();
        let apply = |batch: &mut sled::Batch, n: &mut usize, bytes: &mut usize| {
            *n = 0;
            *bytes = 0;
            db.apply_batch(std::mem::take(batch))
                .map_err(PutFailure::Cache)
        };
        while let Some((key, stat, count)) = files.next_file()? {
            let value = if count <= SEGMENT_RECORDS as u64 {
                buf.clear();
                files.next_records(count as usize, &mut buf)?;
                encode_inline(&stat, &buf)
            } else if u32::try_from(count).is_ok() {
                let digest = self.write_list(&key, count, files, &mut buf)?;
                encode_listed(&stat, count, &digest).unwrap_or_default()
            } else {
                // More than u32 chunks: not cached (its list is skipped).
                continue;
            };
            self.forget_old(db, &key, count, &mut batch);
            bytes += value.len();
            batch.insert(key, value);
            n += 1;
            if n >= PUT_SLICE || bytes >= PUT_BATCH_BYTES {
                apply(&mut batch, &mut n, &mut bytes)?;
            }
        }
        apply(&mut batch, &mut n, &mut bytes)
    }

    /// Writes the current file's list of `count` chunks to its file; the list's digest.
    fn write_list(
        &self,
        key: &[u8],
        count: u64,
        files: &mut dyn PutSource,
        buf: &mut Vec<u8>,
    ) -> Result<[u8; DIGEST_LEN], PutFailure> {
        let mut out = ListFile::create(&self.lists(), key).map_err(PutFailure::List)?;
        let mut left = count;
        while left > 0 {
            let take = left.min(SEGMENT_RECORDS as u64);
            buf.clear();
            let res = (files
                .next_records(take as usize, buf)
                .map_err(PutFailure::Source))
            .and_then(|()| out.write(buf).map_err(PutFailure::List));
            if let Err(e) = res {
                out.abandon();
                return Err(e);
            }
            left -= take;
        }
        out.finish().map_err(PutFailure::List)
    }

    /// Removes, with the value `key` is about to get (a list of `count` chunks), what its old
    /// value kept outside it: an earlier agent's segments, or a list file no longer used.
    fn forget_old(&self, db: &sled::Db, key: &[u8], count: u64, batch: &mut sled::Batch) {
        let Some(old) = db.get(key).ok().flatten().and_then(CachedFile::decode) else {
            return;
        };
        for i in 1..=old.segments() {
            batch.remove(segment_key(key, i));
        }
        if old.digest().is_some() && count <= SEGMENT_RECORDS as u64 {
            list_file::remove(&self.lists(), key);
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
        let decoded = CachedFile::decode(raw);
        if decoded.is_none() {
            self.recover(&mut slot);
        }
        decoded
    }

    fn records(
        &self,
        key: &[u8],
        file: &CachedFile,
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        if let Some(digest) = file.digest() {
            let list = (file.count(), digest, file.stat.size);
            return list_file::read(&self.lists(), key, list, f);
        }
        f(file.head())?;
        let (mut total, mut left) = (
            sizes(file.head()),
            file.count() - (file.head().len() / CHUNK_RECORD) as u64,
        );
        for i in 1..=file.segments() {
            let want = left.min(SEGMENT_RECORDS as u64);
            let Some(seg) = self.segment(key, i, want) else {
                debug!(
                    segment = i,
                    "a cached chunk list's segment is missing; treating as a miss"
                );
                return Ok(false);
            };
            total += sizes(&seg);
            f(&seg)?;
            left -= want;
        }
        Ok(total == file.stat.size)
    }

    fn put_all(&self, files: &mut dyn PutSource) -> io::Result<()> {
        let Ok(slot) = self.db.lock() else {
            return Ok(());
        };
        let Some(db) = slot.as_ref() else {
            return Ok(());
        };
        // Batches of at most PUT_SLICE files and PUT_BATCH_BYTES: one sled batch holds all its
        // values in memory until applied, so a single batch of a whole data set's entries grew
        // the agent with the number of files. Files are independent (each one right on its
        // own), so a crash between batches only leaves fewer of them.
        let res = self.put_files(db, files);
        let flushed = db.flush().map(drop).map_err(PutFailure::Cache);
        match res.and(flushed) {
            Ok(()) => Ok(()),
            Err(PutFailure::Source(e)) => Err(e),
            Err(PutFailure::Cache(e)) => {
                warn!(cache = %self.dir.display(), error = %e, "cannot update the file cache; the next backup reads these files again");
                Ok(())
            }
            Err(PutFailure::List(e)) => {
                warn!(cache = %self.lists().display(), error = %e, "cannot write a long chunk list of the file cache (check free space); the next backup reads these files again");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use lifeboat_common::ids::CHUNK_ID_LEN;
    use std::collections::VecDeque;

    /// A file of `n` chunks of `size` bytes each, ids counting up from `first`.
    fn sample_n(first: u32, n: u32, size: u32) -> Sample {
        let mut records = Vec::new();
        for i in first..first + n {
            let mut id = [0xa5u8; CHUNK_ID_LEN];
            id[..4].copy_from_slice(&i.to_le_bytes());
            records.extend_from_slice(&id);
            records.extend_from_slice(&size.to_le_bytes());
        }
        let stat = CacheStat {
            size: u64::from(size) * u64::from(n),
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: -5,
            inode: 42,
        };
        (stat, records)
    }

    fn sample(size: u32) -> Sample {
        sample_n(1, 2, size)
    }

    /// Files to put, from memory.
    struct Files {
        files: VecDeque<(Vec<u8>, CacheStat, Vec<u8>)>,
        current: Vec<u8>,
    }

    impl PutSource for Files {
        fn next_file(&mut self) -> io::Result<Option<(Vec<u8>, CacheStat, u64)>> {
            Ok(self.files.pop_front().map(|(key, stat, records)| {
                let n = (records.len() / CHUNK_RECORD) as u64;
                self.current = records;
                (key, stat, n)
            }))
        }
        fn next_records(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
            let rest = self.current.split_off(n * CHUNK_RECORD);
            out.extend_from_slice(&self.current);
            self.current = rest;
            Ok(())
        }
    }

    /// A file's stat and chunk records.
    type Sample = (CacheStat, Vec<u8>);

    fn put(c: &dyn FileCache, files: &[(&[u8], Sample)]) {
        let files = files
            .iter()
            .map(|(k, (stat, r))| (k.to_vec(), *stat, r.clone()))
            .collect();
        let mut files = Files {
            files,
            current: Vec::new(),
        };
        c.put_all(&mut files).expect("put");
    }

    /// The stat and whole list cached under `key`, if it is all there.
    fn whole(c: &dyn FileCache, key: &[u8]) -> Option<Sample> {
        let f = c.get(key)?;
        let mut records = Vec::new();
        let all = c
            .records(key, &f, &mut |r| {
                records.extend_from_slice(r);
                Ok(())
            })
            .expect("records");
        all.then_some((f.stat, records))
    }

    #[test]
    fn values_round_trip_and_garbage_is_rejected() {
        let (stat, records) = sample(100);
        let enc = value::encode_inline(&stat, &records);
        let f = CachedFile::decode(enc.clone().into()).expect("decodes");
        assert_eq!(
            (f.stat, f.count(), f.head(), f.segments(), f.digest()),
            (stat, 2, &records[..], 0, None)
        );
        assert_eq!(CachedFile::decode(enc[..enc.len() - 1].into()), None);
        let mut wrong_sum = enc.clone();
        wrong_sum[37 + CHUNK_ID_LEN] ^= 1;
        assert_eq!(
            CachedFile::decode(wrong_sum.into()),
            None,
            "sizes must add up"
        );
        assert_eq!(CachedFile::decode(b"\x09garbage".as_slice().into()), None);
        let mut v4 = enc.clone();
        v4[0] = 4;
        assert_eq!(CachedFile::decode(v4.into()), None, "an unknown version");
        // An older agent's value holds any number of records (the only version it wrote).
        let (stat, long) = sample_n(0, SEGMENT_RECORDS as u32 + 3, 8);
        let f = CachedFile::decode(value::encode_inline(&stat, &long).into()).expect("version 1");
        assert_eq!((f.head(), f.segments()), (&long[..], 0));
        // A segmented head holds exactly one segment's records.
        let long = (SEGMENT_RECORDS + 1) as u64;
        let short_head = value::encode_segmented(&stat, long, &records).expect("encodes");
        assert_eq!(CachedFile::decode(short_head.into()), None);
        // A listed value holds its digest and no records, for a list longer than a segment.
        let listed = value::encode_listed(&stat, long, &[7; DIGEST_LEN]).expect("encodes");
        let f = CachedFile::decode(listed.clone().into()).expect("version 3");
        assert_eq!(
            (f.count(), f.head(), f.segments(), f.digest()),
            (long, &[][..], 0, Some(&[7u8; DIGEST_LEN][..]))
        );
        assert_eq!(CachedFile::decode(listed[..listed.len() - 1].into()), None);
        let short = value::encode_listed(&stat, 2, &[7; DIGEST_LEN]).expect("encodes");
        assert_eq!(CachedFile::decode(short.into()), None);
    }

    #[test]
    fn a_long_list_is_kept_in_a_file_of_its_own_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open_when_free(&dir.path().join("cache"));
        let seg = SEGMENT_RECORDS as u32;
        let long = sample_n(0, 3 * seg + 5, 9);
        let exact = sample_n(7, seg, 3);
        put(&c, &[(b"long", long.clone()), (b"exact", exact.clone())]);
        assert_eq!(whole(&c, b"long"), Some(long.clone()));
        assert_eq!(
            whole(&c, b"exact"),
            Some(exact.clone()),
            "one segment's worth stays inline"
        );
        let f = c.get(b"long").expect("value");
        assert_eq!((f.count(), f.segments()), (u64::from(3 * seg + 5), 0));
        let file = list_file::path(&c.lists(), b"long");
        assert_eq!(
            std::fs::metadata(&file).expect("its file").len(),
            long.1.len() as u64
        );
        // Shorter, then longer again: each reads back as it was last put.
        let shorter = sample_n(100, seg + 1, 5);
        put(&c, &[(b"long", shorter.clone())]);
        assert_eq!(whole(&c, b"long"), Some(shorter));
        let longer = sample_n(200, 4 * seg, 2);
        put(&c, &[(b"long", longer.clone())]);
        assert_eq!(whole(&c, b"long"), Some(longer.clone()));
        // A lost file, another list's file (the value's digest), or records whose sizes do not
        // add up to the file's are a miss, not a wrong list.
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(whole(&c, b"long"), None);
        put(&c, &[(b"long", long.clone())]);
        let kept = std::fs::read(&file).expect("read");
        put(&c, &[(b"long", sample_n(300, 3 * seg + 5, 9))]);
        std::fs::write(&file, &kept).expect("write");
        assert_eq!(whole(&c, b"long"), None, "the digest tells the lists apart");
        let db = c.db.lock().expect("lock").clone().expect("db");
        let (wrong_size, _) = sample_n(0, 3 * seg + 5, 10);
        let digest = *blake3::hash(&long.1).as_bytes();
        let value = value::encode_listed(&wrong_size, u64::from(3 * seg + 5), &digest);
        db.insert(b"long", value.expect("encodes")).expect("insert");
        assert_eq!(whole(&c, b"long"), None, "sizes must add up");
        // Short again, the file goes.
        put(&c, &[(b"long", exact.clone())]);
        assert_eq!(whole(&c, b"long"), Some(exact.clone()));
        assert!(!file.exists());
        // `f`'s error is the caller's.
        put(&c, &[(b"long", long)]);
        let f = c.get(b"long").expect("value");
        let err = c.records(b"long", &f, &mut |_| Err(io::Error::other("full")));
        assert_eq!(err.expect_err("f failed").to_string(), "full");
    }

    /// Lists an earlier agent wrote, one long value (version 1) or segments (version 2), read
    /// back whole; rewritten, a version-2 list's segments are removed.
    #[test]
    fn an_earlier_agents_long_lists_read_back_and_are_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open_when_free(&dir.path().join("cache"));
        let db = c.db.lock().expect("lock").clone().expect("db");
        let seg = SEGMENT_RECORDS as u32;
        let (stat, old) = sample_n(5, 2 * seg, 4);
        db.insert(b"v1", value::encode_inline(&stat, &old))
            .expect("insert");
        assert_eq!(whole(&c, b"v1"), Some((stat, old)));
        let (stat, records) = sample_n(0, 2 * seg + 3, 6);
        let rec = CHUNK_RECORD * SEGMENT_RECORDS;
        let head = value::encode_segmented(&stat, u64::from(2 * seg + 3), &records[..rec]);
        db.insert(b"v2", head.expect("encodes")).expect("insert");
        db.insert(segment_key(b"v2", 1), &records[rec..2 * rec])
            .expect("insert");
        db.insert(segment_key(b"v2", 2), &records[2 * rec..])
            .expect("insert");
        assert_eq!(whole(&c, b"v2"), Some((stat, records.clone())));
        let f = c.get(b"v2").expect("value");
        assert_eq!(f.segments(), 2);
        // A lost segment is a miss.
        let second = db.remove(segment_key(b"v2", 2)).expect("remove");
        assert_eq!(whole(&c, b"v2"), None);
        db.insert(segment_key(b"v2", 2), second.expect("there"))
            .expect("insert");
        let newer = sample_n(50, 2 * seg + 3, 6);
        put(&c, &[(b"v2", newer.clone())]);
        assert_eq!(whole(&c, b"v2"), Some(newer));
        for i in 1..=2 {
            assert_eq!(db.get(segment_key(b"v2", i)).expect("get"), None);
        }
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
            put(c.as_ref(), &[(&key, sample(7))]);
            assert_eq!(whole(c.as_ref(), &key), Some(sample(7)));
        }
        let c = open_when_free(&p);
        assert_eq!(whole(&c, &key), Some(sample(7)));
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
        put(&c, &[(b"k2", sample(3))]);
        assert_eq!(whole(&c, b"k2"), Some(sample(3)), "a fresh cache works");
    }

    #[test]
    fn unopenable_cache_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cache");
        std::fs::write(&p, b"not a directory").expect("write");
        let c = SledCache::open(&p);
        put(c.as_ref(), &[(b"k", sample(3))]);
        assert_eq!(whole(c.as_ref(), b"k"), Some(sample(3)));
        assert!(p.is_dir());
    }
}
