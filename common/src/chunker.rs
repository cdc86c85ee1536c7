//! Streaming content-defined chunking (FastCDC 2020) with a keyed gear table.
//!
//! Memory is one buffer of `max` bytes per chunker, whatever the input size. Boundaries depend
//! only on the bytes and the seed, never on how reads split the input (tested below), so an
//! unchanged region of a file yields the same chunks, and thus the same ids, in every backup.
//!
//! The seed comes from the master key ([`crate::keys::DataKeys::chunker_seed`]), so chunk
//! lengths differ between fleets. The parameters in use are recorded in each manifest, because a
//! restore that skips unchanged files must re-chunk them the same way.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::blob::MAX_CHUNK_LEN;

/// Minimum, average and maximum chunk sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid chunker parameters min={min} avg={avg} max={max}: need min >= 64, avg >= 256, max >= 1024, min <= avg <= max, max <= 8 MiB, all even"
)]
pub struct ChunkerParamsError {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    /// Defaults for file trees (the design's starting point; tuned by `scripts/bench`).
    pub const FILES: ChunkerParams = ChunkerParams {
        min: 256 << 10,
        avg: 1 << 20,
        max: 4 << 20,
    };

    /// Defaults for database dumps: rows change in place, so smaller chunks re-store far less
    /// after a small change (measured in `docs/adr/0005-dump-chunking.md`; 4/16/64 KiB until
    /// session 5). Each manifest records the parameters it was chunked with, so changing these
    /// defaults changes no format: the next backup of a rewritten dump simply cuts differently.
    pub const DUMPS: ChunkerParams = ChunkerParams {
        min: 2 << 10,
        avg: 8 << 10,
        max: 32 << 10,
    };

    pub fn validate(&self) -> Result<(), ChunkerParamsError> {
        let ok = self.min >= 64
            && self.avg >= 256
            && self.max >= 1024
            && self.min <= self.avg
            && self.avg <= self.max
            && (self.max as usize) <= MAX_CHUNK_LEN
            && self.min.is_multiple_of(2)
            && self.avg.is_multiple_of(2)
            && self.max.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(ChunkerParamsError {
                min: self.min,
                avg: self.avg,
                max: self.max,
            })
        }
    }
}

/// Splits a reader into chunks. Yields owned chunk plaintexts.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(reader: R, params: ChunkerParams, seed: u64) -> Self {
        Chunker {
            inner: StreamCDC::with_level_and_seed(
                reader,
                params.min as usize,
                params.avg as usize,
                params.max as usize,
                Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|r| r.map(|c| c.data).map_err(std::io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns at most `step` bytes per read, to vary how input is split.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    const SMALL: ChunkerParams = ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
    };

    proptest! {
        #[test]
        fn boundaries_do_not_depend_on_read_sizes(seed in any::<u64>(), len in 0usize..200_000, step in 1usize..10_000) {
            let data = pseudo_random(len, seed);
            let whole: Vec<Vec<u8>> = Chunker::new(&data[..], SMALL, 77).collect::<Result<_, _>>().expect("chunk");
            let dribbled: Vec<Vec<u8>> = Chunker::new(Dribble { data: &data, step }, SMALL, 77).collect::<Result<_, _>>().expect("chunk");
            prop_assert_eq!(&whole, &dribbled);
            prop_assert_eq!(whole.concat(), data);
        }
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(500_000, 3);
        let a: Vec<usize> = Chunker::new(&data[..], SMALL, 1)
            .map(|c| c.expect("c").len())
            .collect();
        let b: Vec<usize> = Chunker::new(&data[..], SMALL, 2)
            .map(|c| c.expect("c").len())
            .collect();
        assert_ne!(a, b);
        assert!(a.iter().all(|&l| l <= SMALL.max as usize));
    }

    #[test]
    fn params_validation() {
        assert!(ChunkerParams::FILES.validate().is_ok());
        assert!(
            ChunkerParams {
                min: 10,
                avg: 4,
                max: 2
            }
            .validate()
            .is_err()
        );
        assert!(
            ChunkerParams {
                min: 1024,
                avg: 4096,
                max: 16 << 20
            }
            .validate()
            .is_err()
        );
    }
}
