//! Buffered appends to a file that is read back by position: the agent's scratch files (a backup
//! pass's chunk lists and sorting runs, a restore's manifest entries). Bytes are written in
//! buffer-sized `pwrite`s at the end and never synced: a scratch file's contents matter only to
//! the process that wrote them.

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
