//! Unlinked scratch files in the agent's state directory, for what a backup or a restore would
//! otherwise hold in memory in proportion to the source (ADR 0013): a backup pass's chunk lists
//! and sorting runs, a restore's manifest entries.
//!
//! A scratch file has no name (`O_TMPFILE`; where the filesystem lacks it, a named file removed
//! as soon as it is open), so a crash leaves nothing behind, and it is never synced: losing it
//! loses only the operation using it, which fails with [`scratch_error`] naming the directory.
//! Not `/tmp`: where that is a tmpfs (Debian 13, Fedora, Arch) the bytes would still be memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::AgentError;

/// Opens an unlinked read-write file in `dir`.
pub fn temp_file(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags, Mode::RUSR | Mode::WUSR) {
        Ok(fd) => return Ok(File::from(fd)),
        // The filesystem has no O_TMPFILE (the kernel says either).
        Err(Errno::OPNOTSUPP | Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".lifeboat-spill-{}-{n}", std::process::id()));
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match opened {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A scratch file in `dir` could not be created, written or read back.
pub fn scratch_error(dir: &Path, e: io::Error) -> AgentError {
    AgentError::io("cannot use a scratch file (check free space) in", dir, e)
}
