//! Splitting a byte stream into chunks exactly as every backup does, so that a restore can
//! re-chunk an existing file and compare ids with the manifest's.
//!
//! Streams shorter than the chunker's `min` are one chunk, taken without building a chunker
//! (its buffer is `max` bytes, too costly per small file); longer streams go through
//! [`lifeboat_common::chunker::Chunker`]. Both give the same boundaries, because FastCDC never
//! cuts before `min`. Memory stays at one chunk whatever the stream's length.

use std::io::{self, Cursor, Read};

use lifeboat_common::chunker::{Chunker, ChunkerParams};

/// Calls `f` with each chunk of `reader`, in order. Returns the total bytes read.
pub fn for_each_chunk<R, F, E>(
    reader: R,
    params: ChunkerParams,
    seed: u64,
    mut f: F,
) -> Result<u64, E>
where
    R: Read,
    F: FnMut(Vec<u8>) -> Result<(), E>,
    E: From<io::Error>,
{
    let mut reader = reader;
    let mut head = Vec::new();
    (&mut reader)
        .take(u64::from(params.min))
        .read_to_end(&mut head)?;
    let mut probe = [0u8; 1];
    let more = loop {
        match reader.read(&mut probe) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if more == 0 {
        let n = head.len() as u64;
        if !head.is_empty() {
            f(head)?;
        }
        return Ok(n);
    }
    let stream = Cursor::new(head).chain(Cursor::new(probe)).chain(reader);
    let mut total = 0u64;
    for chunk in Chunker::new(stream, params, seed) {
        let chunk = chunk?;
        total += chunk.len() as u64;
        f(chunk)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ChunkerParams = ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
    };

    fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let n = for_each_chunk::<_, _, io::Error>(data, P, 7, |c| {
            out.push(c);
            Ok(())
        })
        .expect("chunk");
        assert_eq!(n, data.len() as u64);
        out
    }

    #[test]
    fn small_streams_are_one_chunk_and_large_ones_match_the_chunker() {
        assert!(chunks(b"").is_empty());
        assert_eq!(chunks(b"hello"), vec![b"hello".to_vec()]);
        let exact = vec![5u8; 1024];
        assert_eq!(chunks(&exact), vec![exact.clone()]);
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let direct: Vec<Vec<u8>> = Chunker::new(&data[..], P, 7)
            .collect::<Result<_, _>>()
            .expect("chunk");
        assert_eq!(chunks(&data), direct);
    }
}
