//! One dump process, its stdout streamed through the [`Scanner`] into the chunker on a
//! dedicated thread: no temporary file, and memory bounded by the channel (a few chunks) and the
//! chunker's buffer whatever the database size. The chunks' ids and sizes are not kept here: the
//! caller records them as it receives the chunks. The caller validates the outcome.
//!
//! If the receiver goes away (the backup was cancelled or failed), the dump process is killed.

use std::process::{ExitStatus, Stdio};

use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use tokio::sync::mpsc;

use super::scan::{ScanReader, ScanSummary, Scanner};
use super::{MysqlError, Server, collect_stderr, tail};
use crate::chunking::for_each_chunk;

/// What to run.
pub struct DumpJob {
    pub server: Server,
    /// Dump options and the database name (or `--system=users`).
    pub args: Vec<String>,
    pub params: ChunkerParams,
    pub keys: DataKeys,
}

/// How the dump ended.
#[derive(Debug)]
pub struct DumpDone {
    /// Bytes dumped (those of every chunk sent).
    pub size: u64,
    pub summary: ScanSummary,
    pub status: ExitStatus,
    pub stderr: String,
    /// Reading the dump's stdout failed.
    pub read_error: Option<String>,
}

pub enum DumpMsg {
    Chunk { id: ChunkId, data: Vec<u8> },
    Done(Box<Result<DumpDone, MysqlError>>),
}

struct Stopped;

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

enum Stop {
    Io(std::io::Error),
    Receiver(Stopped),
}

/// Runs the job, sending chunks then one `Done`. Meant for a dedicated thread.
pub fn run(job: DumpJob, tx: mpsc::Sender<DumpMsg>) {
    let tool = job.server.dump_tool.display().to_string();
    let spawned = job
        .server
        .command(&job.server.dump_tool)
        .args(&job.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(source) => {
            let _ = tx.blocking_send(DumpMsg::Done(Box::new(Err(MysqlError::Spawn {
                tool,
                source,
            }))));
            return;
        }
    };
    let stderr = child.stderr.take().map(collect_stderr);
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return;
    };
    let mut reader = ScanReader {
        inner: stdout,
        scanner: Scanner::default(),
    };
    let mut sent = 0u64;
    let res = for_each_chunk(
        &mut reader,
        job.params,
        job.keys.chunker_seed(),
        |data: Vec<u8>| {
            let id = job.keys.chunk_id(&data);
            sent += data.len() as u64;
            tx.blocking_send(DumpMsg::Chunk { id, data })
                .map_err(|_| Stop::Receiver(Stopped))
        },
    );
    let (size, read_error) = match res {
        Ok(n) => (n, None),
        Err(Stop::Io(e)) => (sent, Some(e.to_string())),
        Err(Stop::Receiver(Stopped)) => {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
    };
    drop(reader.inner);
    if read_error.is_some() {
        let _ = child.kill();
    }
    let status = child.wait();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let done = status
        .map(|status| DumpDone {
            size,
            summary: reader.scanner.finish(),
            status,
            stderr: tail(&stderr),
            read_error,
        })
        .map_err(|source| MysqlError::Spawn { tool, source });
    let _ = tx.blocking_send(DumpMsg::Done(Box::new(done)));
}

/// Describes an exit status for operators: "exit code 2" or "killed by signal 9".
pub fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}
