//! Scratch files for what a backup pass learns per file: the walk's items and the read's results.
//!
//! Held in memory, they were what still grew with the number of files at every backup's peak
//! after ADR 0013 moved the per-chunk lists out: ~130 bytes an item (its stat, its relative path,
//! a symlink's target) and ~40 a file's result, 3.5 MB at the benchmark's 20,700 files and ten
//! times that for a tree ten times larger. Every consumer takes them in walk order (the reader
//! thread, the manifest's writer, the file cache's update after the commit), so both are appended
//! to unlinked files in the state directory ([`crate::scratch`]) and read back sequentially,
//! 64 KiB at a time: what a pass holds per file is two buffers, whatever the tree.
//!
//! Records are this process's own (written and read by one pass, never kept): an item is a fixed
//! header then its path and target bytes; a result is fixed-size. Failure modes as for the chunk
//! lists ([`super::spill`]): a full or failing filesystem fails the pass with an error naming
//! the directory; a record that does not read back whole is an error, never a shorter tree.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use lifeboat_common::appender::{Appender, Window};
use lifeboat_common::manifest::EntryKind;

use super::spill::{BUFFER_BYTES, Span};
use super::walk::{Stat, WalkItem};
use crate::scratch::temp_file;

/// An item's fixed part: root, kind, mode, uid, gid, mtime s, mtime ns, ctime ns, inode, size,
/// then the lengths of its relative path and symlink target.
const ITEM_HEAD: usize = 4 + 1 + 4 + 4 + 4 + 8 + 4 + 8 + 8 + 8 + 4 + 4;

/// A result: walk index, span (first, count), size, flags.
const RESULT: usize = 8 + 16 + 8 + 1;
const CACHED: u8 = 1;
const CACHEABLE: u8 = 2;

/// Reads a scratch file front to back through a [`Window`].
struct Cursor {
    window: Window,
    pos: u64,
}

impl Cursor {
    fn new(file: Arc<File>, len: u64) -> Self {
        Cursor {
            window: Window::new(file, len, BUFFER_BYTES),
            pos: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.window.len()
    }

    /// The next `n` bytes (an error past the end).
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let at = self.pos;
        self.pos += n as u64;
        self.window.bytes_at(at, n)
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Appends the walk's items (on the walk's thread).
pub struct ItemWriter {
    out: Appender,
    file_bytes: u64,
}

impl ItemWriter {
    pub fn create(dir: &Path) -> io::Result<Self> {
        Ok(ItemWriter {
            out: Appender::new(temp_file(dir)?, BUFFER_BYTES),
            file_bytes: 0,
        })
    }

    pub fn push(&mut self, item: &WalkItem) -> io::Result<()> {
        let s = &item.stat;
        let too_long = || io::Error::other("a path or link target over 4 GiB");
        let rel = u32::try_from(item.rel.len()).map_err(|_| too_long())?;
        let target = u32::try_from(item.symlink_target.len()).map_err(|_| too_long())?;
        let mut h = [0u8; ITEM_HEAD];
        let mut at = 0;
        let mut put = |b: &[u8]| {
            h[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        put(&item.root.to_le_bytes());
        put(&[item.kind as u8]);
        for v in [s.mode, s.uid, s.gid] {
            put(&v.to_le_bytes());
        }
        put(&s.mtime_sec.to_le_bytes());
        put(&s.mtime_nsec.to_le_bytes());
        put(&s.ctime_ns.to_le_bytes());
        put(&s.inode.to_le_bytes());
        put(&s.size.to_le_bytes());
        put(&rel.to_le_bytes());
        put(&target.to_le_bytes());
        debug_assert_eq!(at, ITEM_HEAD);
        self.out.write(&h)?;
        self.out.write(&item.rel)?;
        self.out.write(&item.symlink_target)?;
        if item.kind == EntryKind::File {
            self.file_bytes += s.size;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<Items> {
        self.out.finish()?;
        Ok(Items {
            file: self.out.file().clone(),
            len: self.out.written(),
            file_bytes: self.file_bytes,
        })
    }
}

/// The walk's items, in walk order ([`Items::reader`]).
pub struct Items {
    file: Arc<File>,
    len: u64,
    file_bytes: u64,
}

impl Items {
    /// The regular files' sizes, as the walk saw them, added up.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn reader(&self) -> ItemReader {
        ItemReader {
            window: Cursor::new(self.file.clone(), self.len),
            index: 0,
        }
    }
}

/// Yields `(walk index, item)` in walk order.
pub struct ItemReader {
    window: Cursor,
    index: usize,
}

impl ItemReader {
    fn read(&mut self) -> io::Result<WalkItem> {
        let h = self.window.take(ITEM_HEAD)?;
        let kind = match h[4] {
            k if k == EntryKind::Dir as u8 => EntryKind::Dir,
            k if k == EntryKind::File as u8 => EntryKind::File,
            k if k == EntryKind::Symlink as u8 => EntryKind::Symlink,
            _ => EntryKind::Unspecified,
        };
        let (root, rel_len, target_len) = (u32_at(h, 0), u32_at(h, 53), u32_at(h, 57));
        let stat = Stat {
            mode: u32_at(h, 5),
            uid: u32_at(h, 9),
            gid: u32_at(h, 13),
            mtime_sec: u64_at(h, 17) as i64,
            mtime_nsec: u32_at(h, 25),
            ctime_ns: u64_at(h, 29) as i64,
            inode: u64_at(h, 37),
            size: u64_at(h, 45),
        };
        let rel = self.window.take(rel_len as usize)?.to_vec();
        let symlink_target = self.window.take(target_len as usize)?.to_vec();
        Ok(WalkItem {
            root,
            rel,
            kind,
            stat,
            symlink_target,
        })
    }
}

impl Iterator for ItemReader {
    type Item = io::Result<(usize, WalkItem)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.window.at_end() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        Some(self.read().map(|item| (index, item)))
    }
}

/// What the read recorded for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileResult {
    /// The file's walk index.
    pub index: usize,
    /// Its chunk list in the pass's lists ([`super::spill`]).
    pub span: Span,
    pub size: u64,
    /// The ids came from the cache (their chunks were not sent).
    pub cached: bool,
    /// Read whole, at the size the walk saw: to record in the file cache after a successful
    /// commit, under the walk's stat.
    pub cacheable: bool,
}

/// Appends the results of files read whole or from the cache, in walk order (on the reader
/// thread); a file that failed has none.
pub struct ResultWriter {
    out: Appender,
}

impl ResultWriter {
    pub fn create(dir: &Path) -> io::Result<Self> {
        Ok(ResultWriter {
            out: Appender::new(temp_file(dir)?, BUFFER_BYTES),
        })
    }

    pub fn push(&mut self, r: &FileResult) -> io::Result<()> {
        let mut rec = [0u8; RESULT];
        rec[..8].copy_from_slice(&(r.index as u64).to_le_bytes());
        rec[8..24].copy_from_slice(&r.span.to_bytes());
        rec[24..32].copy_from_slice(&r.size.to_le_bytes());
        rec[32] = (u8::from(r.cached) * CACHED) | (u8::from(r.cacheable) * CACHEABLE);
        self.out.write(&rec)
    }

    pub fn finish(mut self) -> io::Result<Results> {
        self.out.finish()?;
        Ok(Results {
            file: self.out.file().clone(),
            len: self.out.written(),
        })
    }
}

/// The read's results, by ascending walk index ([`Results::reader`]).
pub struct Results {
    file: Arc<File>,
    len: u64,
}

impl Results {
    pub fn reader(&self) -> ResultReader {
        ResultReader {
            window: Cursor::new(self.file.clone(), self.len),
            next: None,
        }
    }
}

/// Yields the results in walk order; [`ResultReader::of`] finds one by walk index.
pub struct ResultReader {
    window: Cursor,
    /// A result read ahead, for a later index.
    next: Option<FileResult>,
}

impl ResultReader {
    fn read(&mut self) -> io::Result<Option<FileResult>> {
        if let Some(r) = self.next.take() {
            return Ok(Some(r));
        }
        if self.window.at_end() {
            return Ok(None);
        }
        let rec = self.window.take(RESULT)?;
        Ok(Some(FileResult {
            index: usize::try_from(u64_at(rec, 0)).map_err(io::Error::other)?,
            span: Span::from_bytes(&rec[8..24]),
            size: u64_at(rec, 24),
            cached: rec[32] & CACHED != 0,
            cacheable: rec[32] & CACHEABLE != 0,
        }))
    }

    /// The result for walk index `index` (asked in ascending order), `None` if the file has
    /// none (it failed, or is not a file).
    pub fn of(&mut self, index: usize) -> io::Result<Option<FileResult>> {
        while let Some(r) = self.read()? {
            if r.index >= index {
                if r.index == index {
                    return Ok(Some(r));
                }
                self.next = Some(r);
                return Ok(None);
            }
        }
        Ok(None)
    }
}

impl Iterator for ResultReader {
    type Item = io::Result<FileResult>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u64, kind: EntryKind, rel_len: usize) -> WalkItem {
        WalkItem {
            root: (i % 3) as u32,
            rel: (0..rel_len).map(|b| b as u8 ^ i as u8).collect(),
            kind,
            stat: Stat {
                mode: 0o644 + i as u32,
                uid: 1000,
                gid: 7,
                mtime_sec: -(i as i64),
                mtime_nsec: 999_999_999,
                ctime_ns: i as i64 * 1_000_000_007,
                inode: u64::MAX - i,
                size: i * 4096,
            },
            symlink_target: if kind == EntryKind::Symlink {
                b"/etc/nginx".to_vec()
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn items_read_back_in_order_across_windows_with_one_larger_than_a_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ItemWriter::create(dir.path()).expect("scratch");
        let kinds = [EntryKind::Dir, EntryKind::File, EntryKind::Symlink];
        let mut want: Vec<WalkItem> = (0..3000)
            .map(|i| item(i, kinds[i as usize % 3], (i % 200) as usize))
            .collect();
        want.insert(1500, item(7, EntryKind::File, 3 * BUFFER_BYTES));
        for it in &want {
            w.push(it).expect("scratch");
        }
        let items = w.finish().expect("scratch");
        let files: u64 = want
            .iter()
            .filter(|i| i.kind == EntryKind::File)
            .map(|i| i.stat.size)
            .sum();
        assert_eq!(items.file_bytes(), files);
        let got: Vec<(usize, WalkItem)> = items.reader().map(|r| r.expect("item")).collect();
        assert_eq!(got.len(), want.len());
        for (n, ((i, g), w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(*i, n);
            assert_eq!(
                (g.root, &g.rel, g.kind, &g.stat, &g.symlink_target),
                (w.root, &w.rel, w.kind, &w.stat, &w.symlink_target)
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("listing").count(), 0);
    }

    #[test]
    fn results_are_found_by_index_and_missing_ones_are_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ResultWriter::create(dir.path()).expect("scratch");
        let mut lists = super::super::spill::ListWriter::create(dir.path()).expect("scratch");
        // Every third index has a result (the others failed or are not files).
        let mut want = Vec::new();
        for index in (0..10_000).step_by(3) {
            let mark = lists.mark();
            lists
                .push(&lifeboat_common::ids::ChunkId([index as u8; 32]), 1)
                .expect("scratch");
            let r = FileResult {
                index,
                span: lists.span_since(mark),
                size: index as u64 * 3,
                cached: index % 2 == 0,
                cacheable: index % 5 == 0,
            };
            w.push(&r).expect("scratch");
            want.push(r);
        }
        let results = w.finish().expect("scratch");
        assert_eq!(
            results
                .reader()
                .map(|r| r.expect("result"))
                .collect::<Vec<_>>(),
            want
        );
        let mut r = results.reader();
        for index in 0..10_001 {
            let got = r.of(index).expect("result");
            assert_eq!(
                got,
                want.iter().find(|w| w.index == index).copied(),
                "{index}"
            );
        }
    }

    #[test]
    fn a_truncated_record_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ItemWriter::create(dir.path()).expect("scratch");
        w.push(&item(1, EntryKind::File, 10)).expect("scratch");
        let mut items = w.finish().expect("scratch");
        items.len -= 1;
        let err = items.reader().next().expect("one").expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
