//! Large files written past the page cache (`O_DIRECT`).
//!
//! Why: a restore into ext4 is CPU-bound on both cores, and the agent's largest single cost was
//! the kernel copying every byte it wrote into freshly allocated page-cache pages
//! (`copy_folio_from_iter_atomic`, ~19% of the agent's samples for the 2.5 GiB data set), then
//! zeroing the rest of each page a chunk ended in (~4%), then writing the pages back. With
//! `O_DIRECT` the device takes the bytes from the agent's buffer: no page to allocate, fill or
//! write back, and a restore's large files do not push what else the machine caches out of the
//! page cache.
//!
//! How: chunks are copied into a staging buffer of [`STAGE_BYTES`] aligned to [`ALIGN`] (the
//! strictest memory, offset and length alignment common devices ask for); each full buffer is
//! one write at an aligned offset. The last partial block is written padded with zeros, and the
//! file is then cut to its real length before its metadata is applied.
//!
//! Only files larger than a restore unit take this path: a direct write waits for the device,
//! which for a large file overlaps the fetches and decryption ahead of it, but for a small file
//! would be one wait per file.
//!
//! Only ext4 and XFS get direct writes ([`DIRECT_FILESYSTEMS`]); on any other filesystem the
//! file is written through the page cache as before.
//!
//! Failure modes, none of which loses anything: a filesystem that refuses `O_DIRECT` (the
//! `fcntl` that turns it on fails) writes the file buffered from the start; a write
//! refused with `EINVAL` (a device needing more than [`ALIGN`]) or cut short turns `O_DIRECT`
//! off and writes the rest buffered, from where it stopped. Durability is the same as for
//! buffered files: nothing is promised before the restore's final `syncfs`, which also commits
//! the metadata (sizes, extents) of the directly written files.

use std::fs::File;
use std::io::{self, Write};

use rustix::fs::OFlags;
use rustix::io::Errno;

/// Alignment of the staging buffer's address, of every direct write's offset and of its length.
pub const ALIGN: usize = 4096;
/// Bytes of one direct write (the staging buffer's size).
pub const STAGE_BYTES: usize = 1 << 20;

/// Filesystems (`statfs` magic numbers) whose direct writes skip the page cache: ext2/3/4,
/// where the restore was measured, and XFS. Elsewhere `O_DIRECT` may cost more than it saves
/// (into tmpfs the restore's system time doubled: it still copies into memory, with more
/// steps) or mean something else (NFS: an uncached round trip per write).
const DIRECT_FILESYSTEMS: [u32; 2] = [0xEF53, 0x5846_5342];

/// Whether `file` lies on a filesystem of [`DIRECT_FILESYSTEMS`].
fn direct_helps(file: &File) -> bool {
    // `f_type` is a signed long on some targets; the magic numbers fit in 32 bits.
    rustix::fs::fstatfs(file).is_ok_and(|s| DIRECT_FILESYSTEMS.contains(&(s.f_type as u32)))
}

/// A file being written from its start, directly while the filesystem allows it.
pub struct LargeFile {
    file: File,
    /// `Some` while the file is open with `O_DIRECT`.
    stage: Option<Stage>,
    /// Bytes accepted so far (the file's length once finished).
    len: u64,
}

/// The aligned staging buffer: `buf[start..start + cap]` is aligned to [`ALIGN`].
struct Stage {
    buf: Vec<u8>,
    start: usize,
    cap: usize,
    fill: usize,
}

impl Stage {
    /// A stage for a file of `size` bytes: [`STAGE_BYTES`], or less for a smaller file.
    fn new(size: u64) -> Stage {
        let cap = usize::try_from(size)
            .unwrap_or(STAGE_BYTES)
            .clamp(ALIGN, STAGE_BYTES)
            .next_multiple_of(ALIGN);
        let buf = vec![0u8; cap + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Stage {
            buf,
            start,
            cap,
            fill: 0,
        }
    }

    fn area(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.cap]
    }
}

impl LargeFile {
    /// Wraps a file just created (empty, position 0) that will hold `size` bytes, and turns
    /// `O_DIRECT` on if the filesystem accepts it.
    pub fn new(file: File, size: u64) -> LargeFile {
        let direct = direct_helps(&file)
            && rustix::fs::fcntl_getfl(&file)
                .and_then(|flags| rustix::fs::fcntl_setfl(&file, flags | OFlags::DIRECT))
                .is_ok();
        LargeFile {
            file,
            stage: direct.then(|| Stage::new(size)),
            len: 0,
        }
    }

    /// Whether the file is (still) written directly.
    pub fn is_direct(&self) -> bool {
        self.stage.is_some()
    }

    /// Bytes accepted so far: the file's length once finished.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// The file, for `fadvise` and metadata: not for writing.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes the staged partial block (padded with zeros) and cuts the file to the bytes
    /// accepted. Returns the file, ready for its metadata.
    pub fn finish(mut self) -> io::Result<File> {
        if let Some(mut stage) = self.stage.take() {
            let fill = stage.fill;
            if fill > 0 {
                let padded = fill.next_multiple_of(ALIGN);
                stage.area()[fill..padded].fill(0);
                write_stage(&mut self.file, &mut stage, padded)?;
                self.file.set_len(self.len)?;
            }
        }
        Ok(self.file)
    }

    /// Writes the first `len` bytes of the stage; `stage` is dropped if `O_DIRECT` had to be
    /// turned off.
    fn flush_stage(&mut self, len: usize) -> io::Result<()> {
        if let Some(stage) = &mut self.stage {
            if !write_stage(&mut self.file, stage, len)? {
                self.stage = None;
            } else {
                stage.fill = 0;
            }
        }
        Ok(())
    }
}

/// Writes `stage`'s first `len` bytes (a multiple of [`ALIGN`]) at the file's position, which
/// is aligned. A write refused with `EINVAL` or cut short turns `O_DIRECT` off and writes the
/// rest buffered: returns whether the file is still direct.
fn write_stage(file: &mut File, stage: &mut Stage, len: usize) -> io::Result<bool> {
    let bytes = &stage.area()[..len];
    let mut done = 0;
    while done < len {
        match file.write(&bytes[done..]) {
            Ok(n) if n > 0 && (done + n) % ALIGN == 0 => done += n,
            Ok(n) => return buffered_rest(file, &bytes[done + n..]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => {
                return buffered_rest(file, &bytes[done..]);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Turns `O_DIRECT` off and writes `rest` through the page cache.
fn buffered_rest(file: &mut File, rest: &[u8]) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(&*file)?;
    rustix::fs::fcntl_setfl(&*file, flags - OFlags::DIRECT)?;
    file.write_all(rest)?;
    Ok(false)
}

impl Write for LargeFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(stage) = &mut self.stage else {
            let n = self.file.write(data)?;
            self.len += n as u64;
            return Ok(n);
        };
        let (fill, cap) = (stage.fill, stage.cap);
        let n = (cap - fill).min(data.len());
        stage.area()[fill..fill + n].copy_from_slice(&data[..n]);
        stage.fill += n;
        self.len += n as u64;
        if stage.fill == cap {
            self.flush_stage(cap)?;
        }
        Ok(n)
    }

    /// Nothing: staged bytes are written when the stage is full or by [`LargeFile::finish`]
    /// (a partial block cannot be written directly before the file's end is known).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that differ from block to block, so a block written twice, skipped
    /// or misplaced shows up.
    fn content(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
            .collect()
    }

    /// Writes `data` in pieces of `piece` bytes, finishes, and returns what the file holds.
    fn round_trip(file: LargeFile, data: &[u8], piece: usize, path: &std::path::Path) -> Vec<u8> {
        let mut file = file;
        for part in data.chunks(piece.max(1)) {
            file.write_all(part).expect("write");
        }
        let f = file.finish().expect("finish");
        assert_eq!(f.metadata().expect("stat").len(), data.len() as u64);
        drop(f);
        std::fs::read(path).expect("read back")
    }

    fn create(dir: &tempfile::TempDir, name: &str) -> (File, std::path::PathBuf) {
        let path = dir.path().join(name);
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        (f, path)
    }

    #[test]
    fn lengths_around_the_alignment_and_the_stage_read_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            STAGE_BYTES - 1,
            STAGE_BYTES,
            STAGE_BYTES + 1,
            3 * STAGE_BYTES + 12_345,
        ];
        for (i, &len) in sizes.iter().enumerate() {
            for piece in [8_191, 100_000, STAGE_BYTES + 7] {
                let data = content(len);
                let (f, path) = create(&dir, &format!("f{i}-{piece}"));
                // Sized as a large file is (a full stage) and as a small one would be.
                let file = LargeFile::new(f, if piece == 8_191 { len as u64 } else { 1 << 30 });
                assert_eq!(round_trip(file, &data, piece, &path), data, "len {len}");
            }
        }
    }

    /// A write the device refuses (here: a staging buffer one byte off the alignment, which a
    /// block device's direct I/O refuses with EINVAL) turns `O_DIRECT` off and the file is
    /// written whole through the page cache; on a filesystem that takes unaligned direct
    /// writes, it is written directly. Either way, the same bytes.
    #[test]
    fn a_refused_direct_write_continues_buffered_without_losing_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = content(2 * STAGE_BYTES + 5_000);
        let (f, path) = create(&dir, "misaligned");
        let mut file = LargeFile::new(f, data.len() as u64);
        if let Some(stage) = &mut file.stage {
            // `buf` holds `ALIGN` bytes beyond the aligned area, so the area still fits.
            stage.start += 1;
            assert_ne!(stage.area().as_ptr().align_offset(ALIGN), 0);
        }
        assert_eq!(round_trip(file, &data, 65_536, &path), data);
    }

    #[test]
    fn a_file_the_filesystem_will_not_open_directly_is_written_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = content(STAGE_BYTES + 77);
        let (f, path) = create(&dir, "buffered");
        // What `new` builds when the `fcntl` is refused.
        let file = LargeFile {
            file: f,
            stage: None,
            len: 0,
        };
        assert_eq!(round_trip(file, &data, 10_000, &path), data);
    }

    /// tmpfs is not in the list: a file there is written through the page cache (skipped where
    /// `/dev/shm` is not a writable tmpfs).
    #[test]
    fn a_file_on_tmpfs_is_not_written_directly() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let (f, path) = create(&dir, "shm");
        let is_tmpfs = rustix::fs::fstatfs(&f).is_ok_and(|s| s.f_type as u32 == 0x0102_1994);
        if !is_tmpfs {
            return;
        }
        let file = LargeFile::new(f, 1 << 30);
        assert!(!file.is_direct());
        let data = content(ALIGN + 3);
        assert_eq!(round_trip(file, &data, 1_000, &path), data);
    }
}
