//! Uploading a snapshot's manifest while it is written.
//!
//! The manifest is written entry by entry on a blocking thread (a [`ManifestSink`]), cut with
//! [`ChunkerParams::MANIFEST`] as soon as each cut is known ([`Cutter`]), and every chunk goes
//! over a channel of [`CHANNEL`] chunk to the uploader on the async side, whose batches are
//! narrowed to [`BATCH_BYTES`] meanwhile. The writer holds at most a chunk's `max` (1 MiB) plus
//! the ids encoded since its last cut ([`ManifestWriter::push_with`]), whatever the size of the
//! tree. Held whole, the manifest was the largest thing growing with the source at the
//! no-change backup's peak: ~6.5 MB for the bench's 2.5 GiB (130,000 ids), before its chunks
//! were copied into the uploader.
//!
//! The chunks and ids are the ones cutting the finished manifest would give (the cuts depend
//! only on the bytes and the seed); the restore concatenates whatever chunks a snapshot lists.
//!
//! Failure modes: an upload error is returned at once; the writer's next send then fails and it
//! stops. A writer error is returned once the chunks sent before it are uploaded (uploaded but
//! never committed, they are garbage like any other chunk of a failed backup).

use lifeboat_common::chunker::{ChunkerParams, Cutter};
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{ChunkPieces, Entry, ManifestHeader, ManifestWriter};
use tokio::sync::mpsc;

use super::upload::Uploader;
use crate::error::AgentError;
use crate::remote::Remote;

/// Manifest chunks cut but not yet taken by the uploader. One: with [`BATCH_BYTES`] it keeps
/// what the manifest's upload holds at a few chunks whatever the size of the largest entry.
const CHANNEL: usize = 1;

/// Most plaintext in one of the uploader's batches while the manifest is written, with at most
/// [`super::upload::FLIGHTS`] batches in the air (`Uploader::narrow_batches`). With the file
/// data's 4 MiB batches and up to four flights, a large file's entry (the bench's 1 GiB dump:
/// 3.9 MB) filled them all at once, and the no-change backup's peak grew with the largest file:
/// at 2.5 GiB 28.2–28.6 MiB against 25.6–25.7 with these, the same wall time (the manifest's
/// HaveChunks calls ask about one to four chunks each, ~25 of them at 2.5 GiB).
const BATCH_BYTES: usize = 256 << 10;

type Chunk = (ChunkId, Vec<u8>);

/// Where a manifest is written: each entry is encoded, and every chunk whose cut is known is
/// sent to the uploader.
pub(crate) struct ManifestSink {
    w: ManifestWriter,
    cutter: Cutter,
    keys: DataKeys,
    tx: mpsc::Sender<Chunk>,
}

impl ManifestSink {
    /// Appends an entry (blocks while the uploader is behind).
    pub fn push(&mut self, e: &Entry) -> Result<(), AgentError> {
        let (cutter, keys, tx) = (&self.cutter, &self.keys, &self.tx);
        self.w
            .push_with(e, |buf| send_cut(cutter, keys, tx, buf, false))
    }

    /// Appends an entry whose chunk list is read in `pieces`, not held (a large file's).
    pub fn push_pieces(
        &mut self,
        e: &Entry,
        pieces: &mut dyn ChunkPieces,
    ) -> Result<(), AgentError> {
        let (cutter, keys, tx) = (&self.cutter, &self.keys, &self.tx);
        self.w
            .push_pieces_with(e, pieces, |buf| send_cut(cutter, keys, tx, buf, false))
    }

    /// The end marker and trailer, and the last chunks.
    fn finish(self) -> Result<(), AgentError> {
        let mut rest = self.w.finish();
        send_cut(&self.cutter, &self.keys, &self.tx, &mut rest, true)
    }
}

/// Sends every chunk whose cut is known from the front of `buf` (all of it at the `end`), and
/// removes them from there at once.
fn send_cut(
    cutter: &Cutter,
    keys: &DataKeys,
    tx: &mpsc::Sender<Chunk>,
    buf: &mut Vec<u8>,
    end: bool,
) -> Result<(), AgentError> {
    let mut at = 0;
    while let Some(n) = cutter.next_len(&buf[at..], end) {
        let chunk = buf[at..at + n].to_vec();
        tx.blocking_send((keys.chunk_id(&chunk), chunk))
            .map_err(|_| AgentError::Worker("the manifest's upload stopped".into()))?;
        at += n;
    }
    buf.drain(..at);
    Ok(())
}

/// Writes a manifest under `header` with `write` on a blocking thread while its chunks are
/// uploaded through `up`. Returns the manifest's chunk ids, in order, and what `write` returned.
pub(crate) async fn upload_manifest<R, T, W>(
    up: &mut Uploader<'_, R>,
    keys: &DataKeys,
    header: &ManifestHeader,
    write: W,
) -> Result<(Vec<ChunkId>, T), AgentError>
where
    R: Remote,
    T: Send + 'static,
    W: FnOnce(&mut ManifestSink) -> Result<T, AgentError> + Send + 'static,
{
    up.narrow_batches(BATCH_BYTES);
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let mut sink = ManifestSink {
        w: ManifestWriter::new(header),
        cutter: Cutter::new(ChunkerParams::MANIFEST, keys.chunker_seed()),
        keys: keys.clone(),
        tx,
    };
    let writer = tokio::task::spawn_blocking(move || {
        let out = write(&mut sink)?;
        sink.finish()?;
        Ok::<T, AgentError>(out)
    });
    let mut ids = Vec::new();
    while let Some((id, chunk)) = up.recv_landing(&mut rx).await? {
        ids.push(id);
        up.add(id, chunk).await?;
    }
    let out = writer
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))??;
    Ok((ids, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::for_each_chunk;
    use crate::remote::memory::MemoryRemote;
    use lifeboat_common::blob;
    use lifeboat_common::keys::MasterKey;
    use lifeboat_common::manifest::{self, EntryKind};

    fn file(path: &str, ids: usize, seed: u8) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File as i32,
            mode: 0o644,
            size: ids as u64 * 100,
            chunks: (0..ids as u64)
                .map(|i| {
                    let mut id = [seed; 32];
                    id[..8].copy_from_slice(&i.to_le_bytes());
                    ChunkId(id)
                })
                .collect(),
            chunk_sizes: vec![100; ids],
            ..Entry::default()
        }
    }

    /// A dump-sized entry among small ones: the chunks uploaded as the manifest was written
    /// are the cuts of the whole manifest, each stored, and together the manifest's bytes.
    #[tokio::test]
    async fn the_chunks_uploaded_while_writing_are_the_whole_manifests_cuts() {
        let remote = MemoryRemote::default();
        let keys = MasterKey::from_bytes([5; 32]).data_keys();
        let session = remote.begin_session("t").await.expect("session");
        let mut up = Uploader::new(&remote, session, keys.clone(), 3);
        let header = ManifestHeader {
            source: "t".into(),
            kind: "files".into(),
            roots: vec![b"/srv".to_vec()],
            ..ManifestHeader::default()
        };
        let mut entries: Vec<Entry> = (0..300).map(|i| file(&format!("a{i}"), 3, 1)).collect();
        entries.push(file("dump.sql", 90_000, 2));
        entries.extend((0..300).map(|i| file(&format!("z{i}"), 3, 3)));
        let mut whole = manifest::ManifestWriter::new(&header);
        entries.iter().for_each(|e| whole.push(e));
        let whole = whole.finish();
        let mut cuts = Vec::new();
        for_each_chunk::<_, _, std::io::Error>(
            &whole[..],
            ChunkerParams::MANIFEST,
            keys.chunker_seed(),
            |c| {
                cuts.push(keys.chunk_id(&c));
                Ok(())
            },
        )
        .expect("cut");
        let (ids, n) = upload_manifest(&mut up, &keys, &header, move |sink| {
            entries.iter().try_for_each(|e| sink.push(e))?;
            Ok(entries.len())
        })
        .await
        .expect("upload");
        up.flush().await.expect("flush");
        assert_eq!(n, 601);
        assert!(
            ids.len() > 3,
            "{} chunks for {} bytes",
            ids.len(),
            whole.len()
        );
        assert_eq!(ids, cuts);
        let blobs = remote.blobs.lock().expect("lock");
        let mut read = Vec::new();
        for id in &ids {
            let plain = blob::open(&keys, id, &blobs[id]).expect("stored and sound");
            assert!(plain.len() <= ChunkerParams::MANIFEST.max as usize);
            read.extend_from_slice(&plain);
        }
        assert_eq!(read, whole);
        // Narrow batches: none asks about more than 4 chunks (256 KiB at their 64 KiB minimum;
        // at the uploader's 4 MiB, one batch held all of the dump's entry's).
        let calls = remote.have_calls.lock().expect("lock").clone();
        assert!(calls.iter().all(|&n| n <= 4), "{calls:?}");
    }
}
