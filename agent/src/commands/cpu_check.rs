//! `lifeboat-agent cpu-check --path DIR [--json]`: how fast this machine can do Lifeboat's
//! per-byte work on real files, with no controller and no network.
//!
//! Every file under DIR is read, chunked (FastCDC; the dump parameters for `*.sql`, like a
//! files source's default `dump_files`), hashed into a chunk id (keyed BLAKE3), judged for
//! compressibility, compressed (zstd at the default level) and encrypted (XChaCha20-Poly1305)
//! exactly as a backup seals it, and the sealed blob is hashed once more (BLAKE3, as the
//! controller verifies it). Nothing is written. The work runs on one thread, so its rate is the
//! cost per core; `ceiling` multiplies it by the cores this process may use: no backup on this
//! machine can beat that, whatever its pipeline, because it is this CPU work done on every core
//! with nothing else to do (no I/O, no network, no catalog). `scripts/bench` runs it to show how
//! close a backup comes to the machine's limit.
//!
//! The restore's per-byte work is timed apart, on the same blobs: the agent's open
//! (XChaCha20-Poly1305, zstd, keyed BLAKE3 of the plaintext against the id). The controller
//! does no per-byte work of its own for an agent's restore (agents ask it not to check the
//! blobs they check themselves: `caller_verifies`). Its ceiling leaves out what a restore also
//! pays and a copy pays too (creating and writing the files, the final sync) and what moving
//! the blobs costs (reading the packs, TLS on both ends): `scripts/bench` adds those, measured
//! the plainest way by `scripts/restore_floor.py`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::keys::{DataKeys, MasterKey};
use lifeboat_common::{blob, exit};

use super::{CmdResult, Failure};
use crate::backup::upload::{seal_one, seal_threads};
use crate::chunking::for_each_chunk;
use crate::config::DEFAULT_ZSTD_LEVEL;

#[derive(Debug, clap::Args)]
pub struct CpuCheckArgs {
    /// The directory whose files are measured (read, never changed).
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let t = e.file_type()?;
        if t.is_dir() {
            files_under(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Seals every chunk of one file, then opens it as a restore does; returns the file's size.
/// The time spent opening is added to `restore` (and is not part of the backup's rate).
fn one_file(keys: &DataKeys, path: &Path, restore: &mut Duration) -> std::io::Result<u64> {
    let params = if path.extension().is_some_and(|e| e == "sql") {
        ChunkerParams::DUMPS
    } else {
        ChunkerParams::FILES
    };
    let f = File::open(path)?;
    for_each_chunk(
        BufReader::with_capacity(1 << 20, f),
        params,
        keys.chunker_seed(),
        |data: Vec<u8>| {
            let id = keys.chunk_id(&data);
            let (_, sealed) = seal_one(keys, DEFAULT_ZSTD_LEVEL, id, &data)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            std::hint::black_box(blake3::hash(&sealed));
            let t = Instant::now();
            let plain =
                blob::open(keys, &id, &sealed).map_err(|e| std::io::Error::other(e.to_string()))?;
            std::hint::black_box(plain);
            *restore += t.elapsed();
            Ok::<(), std::io::Error>(())
        },
    )
}

pub fn run(args: &CpuCheckArgs) -> CmdResult {
    let fail = |message: String| Failure {
        message,
        code: exit::ERROR,
    };
    let mut files = Vec::new();
    files_under(&args.path, &mut files).map_err(|e| {
        fail(format!(
            "cannot list {}: {e}; give a readable directory with --path",
            args.path.display()
        ))
    })?;
    let keys = MasterKey::generate().data_keys();
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut restore = Duration::ZERO;
    for f in &files {
        bytes += one_file(&keys, f, &mut restore)
            .map_err(|e| fail(format!("cannot measure {}: {e}", f.display())))?;
    }
    let restore_secs = restore.as_secs_f64().max(1e-9);
    let secs = (started.elapsed().as_secs_f64() - restore_secs).max(1e-9);
    let per_core = bytes as f64 / secs / 1e6;
    let cores = seal_threads();
    let ceiling = per_core * cores as f64;
    let restore_per_core = bytes as f64 / restore_secs / 1e6;
    let restore_ceiling = restore_per_core * cores as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "files": files.len(),
                "bytes": bytes,
                "seconds": secs,
                "mb_per_s_per_core": per_core,
                "cores": cores,
                "ceiling_mb_per_s": ceiling,
                "restore_seconds": restore_secs,
                "restore_mb_per_s_per_core": restore_per_core,
                "restore_ceiling_mb_per_s": restore_ceiling,
            })
        );
    } else {
        println!(
            "{} files, {:.1} MB in {secs:.2} s on one core: {per_core:.0} MB/s per core",
            files.len(),
            bytes as f64 / 1e6
        );
        println!(
            "ceiling with {cores} cores busy and nothing else to do: {ceiling:.0} MB/s (no backup here can go faster)"
        );
        println!(
            "restore: {restore_per_core:.0} MB/s per core to verify, decrypt and decompress; {restore_ceiling:.0} MB/s on {cores} cores, before any file is created or written"
        );
    }
    Ok(exit::SUCCESS)
}
