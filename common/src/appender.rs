//! Buffered appends to a file that is read back by position ([`Window`]): the agent's scratch
//! files (a backup pass's items, results, chunk lists and sorting runs, a restore's manifest
//! entries). Bytes are written in buffer-sized `pwrite`s at the end and never synced: a scratch
//! file's contents matter only to the process that wrote them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// See the module docs.
pub struct Appender {
    file: Arc<File>,
    buf: Vec<u8>,
    buffer: usize,
    written: u64,
}

impl Appender {
    /// Appends to `file` from its start, writing every `buffer` bytes.
    pub fn new(file: File, buffer: usize) -> Self {
        Appender {
            file: Arc::new(file),
            buf: Vec::new(),
            buffer: buffer.max(1),
            written: 0,
        }
    }

    /// Bytes appended so far (written or buffered): where the next byte goes.
    pub fn end(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Bytes written to the file, readable by position.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; as many as the buffer holds, or more, are written at once rather than
    /// copied, so the buffer never grows past twice its size (a cached list of 4 MB copied
    /// through it had kept a 4 MB buffer for the rest of the backup).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= self.buffer {
            self.flush()?;
            self.file.write_all_at(bytes, self.written)?;
            self.written += bytes.len() as u64;
            return Ok(());
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= self.buffer {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is buffered (to the page cache: a scratch file is never synced).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.written)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and frees the buffer (nothing more is appended, or rarely).
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        self.buf = Vec::new();
        Ok(())
    }

    /// The file, for reading what was written.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

/// Reads back by position what an [`Appender`] wrote (the first `len` bytes of its file)
/// through a window of `size` bytes: reads that go forward, or nearly, cost one `pread` per
/// window. A read larger than the window is read whole, and the window goes back to its size
/// at the next read that misses it (a 4 MB entry is not kept for the rest of a pass).
pub struct Window {
    file: Arc<File>,
    len: u64,
    size: usize,
    buf: Vec<u8>,
    /// Where `buf` starts in the file.
    at: u64,
}

impl Window {
    pub fn new(file: Arc<File>, len: u64, size: usize) -> Self {
        Window {
            file,
            len,
            size: size.max(1),
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The bytes readable.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `n` bytes at `at`; an `UnexpectedEof` error if the file holds fewer.
    pub fn bytes_at(&mut self, at: u64, n: usize) -> io::Result<&[u8]> {
        let Some(end) = at.checked_add(n as u64).filter(|&e| e <= self.len) else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{n} bytes at {at} are past the file's {} bytes", self.len),
            ));
        };
        if at < self.at || end > self.at + self.buf.len() as u64 {
            let want = (n.max(self.size) as u64).min(self.len - at) as usize;
            if self.buf.capacity() > self.size.max(want) {
                self.buf = Vec::new();
            }
            self.buf.resize(want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf, at) {
                self.buf.clear();
                return Err(e);
            }
            self.at = at;
        }
        let from = (at - self.at) as usize;
        Ok(&self.buf[from..from + n])
    }

    /// Lets go of a window grown past its size by a large read, now rather than at the next
    /// read that misses it.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > self.size {
            self.buf = Vec::new();
            self.at = 0;
        }
    }

    /// Bytes the window holds room for (tests: that it went back to its size).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_read_back_by_position_across_flushes() {
        let mut a = Appender::new(tempfile::tempfile().expect("tempfile"), 10);
        for i in 0..25u8 {
            a.write(&[i, i]).expect("write");
        }
        assert_eq!((a.end(), a.written()), (50, 50));
        a.write(&[99]).expect("write");
        assert_eq!((a.end(), a.written()), (51, 50), "one byte still buffered");
        a.finish().expect("finish");
        let mut back = vec![0u8; 51];
        a.file().read_exact_at(&mut back, 0).expect("read");
        let want: Vec<u8> = (0..25u8).flat_map(|i| [i, i]).chain([99]).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn a_window_reads_by_position_refuses_past_the_end_and_shrinks_after_a_large_read() {
        let mut a = Appender::new(tempfile::tempfile().expect("tempfile"), 64);
        let all: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        a.write(&all).expect("write");
        a.finish().expect("finish");
        let mut w = Window::new(a.file().clone(), a.written(), 16);
        assert_eq!(w.bytes_at(0, 10).expect("read"), &all[..10]);
        assert_eq!(
            w.bytes_at(5, 10).expect("read"),
            &all[5..15],
            "within the window"
        );
        assert_eq!(
            w.bytes_at(990, 10).expect("read"),
            &all[990..],
            "the end, exactly"
        );
        assert_eq!(w.bytes_at(3, 0).expect("read"), &[] as &[u8]);
        let big = w.bytes_at(100, 500).expect("read").to_vec();
        assert_eq!(big, &all[100..600]);
        assert!(w.capacity() >= 500);
        assert_eq!(w.bytes_at(700, 4).expect("read"), &all[700..704]);
        assert!(w.capacity() <= 32, "back to its size: {}", w.capacity());
        let past = w.bytes_at(995, 6).expect_err("past the end");
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        assert!(w.bytes_at(u64::MAX, 2).is_err());
    }

    #[test]
    fn a_write_larger_than_the_buffer_goes_through_in_order_without_growing_it() {
        let mut a = Appender::new(tempfile::tempfile().expect("tempfile"), 10);
        a.write(&[1, 2, 3]).expect("write");
        let big: Vec<u8> = (10..60).collect();
        a.write(&big).expect("write");
        assert_eq!(
            (a.end(), a.written()),
            (53, 53),
            "buffered bytes first, then the big write"
        );
        assert!(
            a.buf.capacity() < 20,
            "the buffer kept {}",
            a.buf.capacity()
        );
        a.write(&[7]).expect("write");
        a.finish().expect("finish");
        let mut back = vec![0u8; 54];
        a.file().read_exact_at(&mut back, 0).expect("read");
        let want: Vec<u8> = [1, 2, 3].into_iter().chain(10..60).chain([7]).collect();
        assert_eq!(back, want);
    }
}
