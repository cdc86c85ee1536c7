//! Streaming content-defined chunking (FastCDC 2020) with a keyed gear table.
//!
//! Memory is one buffer of `max` + [`READ_AHEAD`] bytes per chunker, whatever the input size.
//! Boundaries depend only on the bytes and the seed, never on how reads split the input (tested
//! below), so an unchanged region of a file yields the same chunks, and thus the same ids, in
//! every backup.
//!
//! The cut search is fastcdc's (`cut_gear`, with the masks and keyed gear tables of its
//! `StreamCDC`, so the boundaries are `StreamCDC`'s: tested below); only the buffering is ours.
//! `StreamCDC` keeps a buffer of exactly `max` bytes and, after every chunk, moves the rest of
//! it to the front and reads to refill it: for dump chunks (8 KiB average, 32 KiB max) that is
//! ~24 KiB moved and a `read` call per 8 KiB chunk. Here a cut is made wherever `max` bytes (or
//! the end of the input) lie ahead, and the buffer is compacted and refilled only when fewer
//! remain: under `max` bytes moved per [`READ_AHEAD`] or more read.
//!
//! The seed comes from the master key ([`crate::keys::DataKeys::chunker_seed`]), so chunk
//! lengths differ between fleets. The parameters in use are recorded in each manifest, because a
//! restore that skips unchanged files must re-chunk them the same way.

use std::borrow::Cow;
use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
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

/// Bytes read beyond `max` per refill (see the module docs): the buffer is `max + READ_AHEAD`.
/// For dump chunks (32 KiB max) a refill reads ~256 KiB and moves under 32 KiB; for file
/// chunks (4 MiB max) the buffer grows by 6% over `StreamCDC`'s.
pub const READ_AHEAD: usize = 256 << 10;

/// Splits a reader into chunks. Yields owned chunk plaintexts.
pub struct Chunker<R: Read> {
    reader: R,
    buf: Vec<u8>,
    /// Start of the bytes not yet cut.
    pos: usize,
    /// End of the bytes read.
    len: usize,
    eof: bool,
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl<R: Read> Chunker<R> {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(reader: R, params: ChunkerParams, seed: u64) -> Self {
        let (gear, gear_ls) = get_gear_with_seed(seed);
        let max = params.max as usize;
        Chunker {
            reader,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            eof: false,
            min: params.min as usize,
            avg: params.avg as usize,
            max,
            masks: select_masks(params.avg as usize, Normalization::Level1),
            gear,
            gear_ls,
        }
    }

    /// Makes `max` bytes available past `pos`, or everything up to the end of the input.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.eof || self.len - self.pos >= self.max {
            return Ok(());
        }
        if self.buf.is_empty() {
            // Allocated on first use: a chunker for a stream shorter than a chunk is cheap.
            self.buf = vec![0; self.max + READ_AHEAD];
        }
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        while self.len < self.buf.len() {
            match self.reader.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        if self.pos == self.len {
            return None;
        }
        let (mask_s, mask_l) = self.masks;
        let (_, count) = cut_gear(
            &self.buf[self.pos..self.len],
            self.min,
            self.avg,
            self.max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        let chunk = self.buf[self.pos..self.pos + count].to_vec();
        self.pos += count;
        Some(Ok(chunk))
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

    /// fastcdc's own streaming chunker with the same parameters: the reference boundaries.
    fn stream_cdc(data: &[u8], p: ChunkerParams, seed: u64) -> Vec<Vec<u8>> {
        fastcdc::v2020::StreamCDC::with_level_and_seed(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level1,
            seed,
        )
        .map(|c| c.expect("chunk").data)
        .collect()
    }

    proptest! {
        #[test]
        fn boundaries_are_fastcdc_stream_cdcs(seed in any::<u64>(), len in 0usize..400_000, step in 1usize..100_000, dumps in any::<bool>()) {
            // DUMPS as shipped; a small FILES-shaped set so the tail case (under `max` left)
            // and cuts at `max` (zeros) are reached within the input.
            let p = if dumps { ChunkerParams::DUMPS } else { ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 } };
            let mut data = pseudo_random(len, seed);
            data[len / 3..len / 2].fill(0);
            let ours: Vec<Vec<u8>> = Chunker::new(Dribble { data: &data, step }, p, seed).collect::<Result<_, _>>().expect("chunk");
            prop_assert_eq!(ours, stream_cdc(&data, p, seed));
        }
    }

    #[test]
    fn interrupted_reads_are_retried_and_errors_reported() {
        struct Flaky<'a> {
            data: &'a [u8],
            calls: usize,
        }
        impl Read for Flaky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.calls += 1;
                match self.calls % 3 {
                    0 => Err(std::io::ErrorKind::Interrupted.into()),
                    _ if self.calls > 40 => Err(std::io::Error::other("disk gone")),
                    _ => {
                        let n = 1000.min(buf.len()).min(self.data.len());
                        buf[..n].copy_from_slice(&self.data[..n]);
                        self.data = &self.data[n..];
                        Ok(n)
                    }
                }
            }
        }
        let data = pseudo_random(20_000, 5);
        let whole: Vec<Vec<u8>> = Chunker::new(
            Flaky {
                data: &data,
                calls: 0,
            },
            SMALL,
            9,
        )
        .collect::<Result<_, _>>()
        .expect("interrupted reads are retried");
        assert_eq!(whole, stream_cdc(&data, SMALL, 9));
        let long = pseudo_random(100_000, 5);
        let err = Chunker::new(
            Flaky {
                data: &long,
                calls: 0,
            },
            SMALL,
            9,
        )
        .collect::<Result<Vec<_>, _>>()
        .expect_err("a failing read ends the stream with its error");
        assert_eq!(err.to_string(), "disk gone");
    }

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
