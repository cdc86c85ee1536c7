//! Streaming content-defined chunking (FastCDC 2020) with a keyed gear table.
//!
//! Memory is at most one chunk's worth of buffered input per chunker, whatever the input size.
//! Boundaries depend only on the bytes and the seed, never on how reads split the input (tested
//! below), so an unchanged region of a file yields the same chunks, and thus the same ids, in
//! every backup.
//!
//! The cut search is fastcdc's `cut_gear` (with the masks and keyed gear tables of its
//! `StreamCDC`, so the boundaries are `StreamCDC`'s: tested below); only the buffering is ours,
//! in one of two modes chosen by the chunk sizes:
//!
//! - **Shared buffer** (small chunks: dumps, 8 KiB average). `StreamCDC` keeps a buffer of
//!   exactly `max` bytes and, after every chunk, moves the rest of it to the front and reads to
//!   refill it: ~24 KiB moved and a `read` call per 8 KiB chunk. Here a cut is made wherever
//!   `max` bytes (or the end of the input) lie ahead, and the buffer is compacted and refilled
//!   only when fewer remain: under `max` bytes moved per [`READ_AHEAD`] or more read. Each chunk
//!   is copied out of the buffer.
//! - **Own buffers** (chunks of at least [`OWN_STEP`]: file trees, 1 MiB average, 4 MiB max).
//!   With a shared buffer every 1 MiB chunk cost a copy out and a move of the ~3 MiB behind it,
//!   and the 4.25 MiB buffer stayed resident beside the chunks in flight. Instead each chunk is
//!   read into a buffer of its own, [`OWN_STEP`] at a time, while a resumable copy of
//!   `cut_gear`'s loop ([`Cut::advance`]) hashes each byte once as it arrives; at the cut that
//!   buffer *is* the chunk, and only the bytes read past the cut (under [`OWN_STEP`]) are
//!   copied to the next one. The buffer reserves `max + OWN_STEP` bytes of address space, but
//!   only the pages read into are touched.
//!
//! A stream written in memory rather than read (the manifest) is cut by a [`Cutter`]: the same
//! `cut_gear` over the writer's own buffer, once `max` bytes lie ahead or the stream has ended.
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

    /// A snapshot's manifest, whatever the source: it is cut as it is written and each chunk
    /// uploaded at once (`max` is what the writer holds, not the whole manifest), and a changed
    /// entry re-stores ~256 KiB of it rather than the ~1 MiB a file-tree chunk was (a no-change
    /// backup of 20,000 files stored 1.7 MB of manifest). Not smaller: a commit lists at most
    /// 4,096 manifest chunks, ~1 GiB of manifest at this average (docs/limits.md). Only the
    /// writer uses these: the restore concatenates whatever chunks a snapshot lists, so changing
    /// them changes no format.
    pub const MANIFEST: ChunkerParams = ChunkerParams {
        min: 64 << 10,
        avg: 256 << 10,
        max: 1 << 20,
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

/// Bytes read beyond `max` per refill of the shared buffer (see the module docs): that buffer
/// is `max + READ_AHEAD`. For dump chunks (32 KiB max) a refill reads ~256 KiB and moves under
/// 32 KiB.
pub const READ_AHEAD: usize = 256 << 10;

/// Bytes read at a time into a chunk's own buffer, and the smallest `min` for which chunks get
/// one (see the module docs): at most this much of each chunk's buffer is moved to the next.
pub const OWN_STEP: usize = 128 << 10;

/// Splits a reader into chunks. Yields owned chunk plaintexts.
pub struct Chunker<R: Read> {
    input: Input<R>,
    cut: Cut,
    mode: Mode,
}

/// A mode's next chunk (`None` at the end of the input).
type NextChunk = std::io::Result<Option<Vec<u8>>>;

/// The stream being cut, and whether it has ended.
struct Input<R: Read> {
    reader: R,
    eof: bool,
}

/// How the bytes not yet cut are held.
enum Mode {
    Shared(Shared),
    Own(Own),
}

/// Small chunks: one buffer of `max + READ_AHEAD`, each chunk copied out of it.
struct Shared {
    buf: Vec<u8>,
    /// Start of the bytes not yet cut.
    pos: usize,
    /// End of the bytes read.
    len: usize,
}

/// Large chunks: the chunk being cut is read into its own buffer, which becomes the chunk; only
/// the bytes read past the cut (under `step`) are moved to the next one.
struct Own {
    cur: Vec<u8>,
    scan: Scan,
    step: usize,
}

/// The cut search's parameters: fastcdc's masks and keyed gear tables.
struct Cut {
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

/// Where a resumable cut search over one chunk's bytes stands: `cut_gear`'s loop state (the
/// index of the next pair of bytes and the rolling hash), so bytes are hashed once however the
/// chunk's reads arrive.
struct Scan {
    index: usize,
    hash: u64,
}

impl<R: Read> Chunker<R> {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(reader: R, params: ChunkerParams, seed: u64) -> Self {
        Self::with_step(reader, params, seed, OWN_STEP)
    }

    /// As [`Chunker::new`], with chunks of at least `step` bytes read `step` at a time into
    /// their own buffers (tests use small steps to reach that mode with small inputs).
    fn with_step(reader: R, params: ChunkerParams, seed: u64, step: usize) -> Self {
        let cut = Cut::new(params, seed);
        let mode = if cut.min >= step {
            Mode::Own(Own {
                cur: Vec::new(),
                scan: cut.scan(),
                step,
            })
        } else {
            Mode::Shared(Shared {
                buf: Vec::new(),
                pos: 0,
                len: 0,
            })
        };
        Chunker {
            input: Input { reader, eof: false },
            cut,
            mode,
        }
    }
}

impl Shared {
    /// The next chunk, copied out of the buffer.
    fn next(&mut self, input: &mut Input<impl Read>, cut: &Cut) -> NextChunk {
        let Shared { buf, pos, len } = self;
        let max = cut.max;
        // Make `max` bytes available past `pos`, or everything up to the end of the input.
        if !input.eof && *len - *pos < max {
            if buf.is_empty() {
                // Allocated on first use: a chunker for a stream shorter than a chunk is cheap.
                *buf = vec![0; max + READ_AHEAD];
            }
            buf.copy_within(*pos..*len, 0);
            *len -= *pos;
            *pos = 0;
            while *len < buf.len() {
                match input.read(&mut buf[*len..])? {
                    0 => break,
                    n => *len += n,
                }
            }
        }
        if *pos == *len {
            return Ok(None);
        }
        let count = cut.len_at(&buf[*pos..*len]);
        let chunk = buf[*pos..*pos + count].to_vec();
        *pos += count;
        Ok(Some(chunk))
    }
}

impl Own {
    /// Reads into the current chunk's buffer until its cut is known, then hands the
    /// buffer out and starts the next one with the bytes read past the cut.
    fn next(&mut self, input: &mut Input<impl Read>, cut: &Cut) -> NextChunk {
        let Own { cur, scan, step } = self;
        let (min, max) = (cut.min, cut.max);
        loop {
            let decided = input.eof || cur.len() >= max;
            if let Some(n) = cut.advance(scan, cur, decided) {
                if n == 0 {
                    return Ok(None);
                }
                let mut next = Vec::with_capacity(max + *step);
                next.extend_from_slice(&cur[n..]);
                cur.truncate(n);
                cur.shrink_to_fit();
                *scan = cut.scan();
                return Ok(Some(std::mem::replace(cur, next)));
            }
            if cur.capacity() == 0 {
                cur.reserve_exact(max + *step);
            }
            // Read to `min` at once (no cut comes before it), then `step` at a time.
            let target = (cur.len() + *step).max(min).min(max);
            let start = cur.len();
            cur.resize(target, 0);
            let mut filled = start;
            while filled < target {
                match input.read(&mut cur[filled..target]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        cur.truncate(filled);
                        return Err(e);
                    }
                }
            }
            cur.truncate(filled);
        }
    }
}

impl<R: Read> Input<R> {
    /// One `read`, retried while interrupted; 0 marks the end of the input.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.reader.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                r => return r,
            }
        }
    }
}

/// Cuts a stream held in memory as it grows (a manifest, written entry by entry): the same
/// boundaries as a [`Chunker`] reading the same bytes, decided once `max` bytes lie ahead or
/// the stream has ended, so the writer holds at most `max` bytes plus what it last appended.
pub struct Cutter {
    cut: Cut,
}

impl Cutter {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        Cutter {
            cut: Cut::new(params, seed),
        }
    }

    /// The length of the chunk at the start of `data`, once it is known: `data` holds `max`
    /// bytes, or `end` says no more will come (`None` then only for no bytes at all).
    pub fn next_len(&self, data: &[u8], end: bool) -> Option<usize> {
        if data.is_empty() || (!end && data.len() < self.cut.max) {
            return None;
        }
        Some(self.cut.len_at(data))
    }
}

impl Cut {
    fn new(params: ChunkerParams, seed: u64) -> Cut {
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Cut {
            min: params.min as usize,
            avg: params.avg as usize,
            max: params.max as usize,
            masks: select_masks(params.avg as usize, Normalization::Level1),
            gear,
            gear_ls,
        }
    }

    /// `cut_gear` over `data`, which holds `max` bytes or everything left of the input: the
    /// length of the chunk at its start.
    fn len_at(&self, data: &[u8]) -> usize {
        let (mask_s, mask_l) = self.masks;
        let (_, count) = cut_gear(
            data,
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
        count
    }

    /// A search from the start of a chunk (no cut comes before `min`).
    fn scan(&self) -> Scan {
        Scan {
            index: self.min / 2,
            hash: 0,
        }
    }

    /// Continues `scan` over `data`, the chunk's bytes read so far: the chunk's length if its
    /// cut is known, `None` if more bytes are needed. `decided`: no more bytes will count (the
    /// input ended, or `max` bytes are here). Exactly `cut_gear`'s loop over the same bytes,
    /// split where the reads end: a pair of bytes is tested once both are here, with the strict
    /// masks below `avg` and the relaxed ones after, so the cuts are `cut_gear`'s (tested
    /// against `StreamCDC` below).
    fn advance(&self, scan: &mut Scan, data: &[u8], decided: bool) -> Option<usize> {
        let remaining = data.len().min(self.max);
        if remaining <= self.min {
            return decided.then_some(remaining);
        }
        let (mask_s, mask_l) = self.masks;
        let (gear, gear_ls) = (&self.gear, &self.gear_ls);
        let strict_below = self.avg / 2;
        let limit = remaining / 2;
        let (mut index, mut hash) = (scan.index, scan.hash);
        while index < limit {
            let (m, m_ls) = if index < strict_below {
                (mask_s, mask_s << 1)
            } else {
                (mask_l, mask_l << 1)
            };
            let a = index * 2;
            hash = (hash << 2).wrapping_add(gear_ls[data[a] as usize]);
            if hash & m_ls == 0 {
                return Some(a);
            }
            hash = hash.wrapping_add(gear[data[a + 1] as usize]);
            if hash & m == 0 {
                return Some(a + 1);
            }
            index += 1;
        }
        *scan = Scan { index, hash };
        decided.then_some(remaining)
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = match &mut self.mode {
            Mode::Shared(m) => m.next(&mut self.input, &self.cut),
            Mode::Own(m) => m.next(&mut self.input, &self.cut),
        };
        next.transpose()
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

        #[test]
        fn chunks_read_into_their_own_buffers_have_stream_cdcs_boundaries(seed in any::<u64>(), len in 0usize..400_000, read in 1usize..100_000, own_step in 1usize..20_000, odd_tail in any::<bool>()) {
            // FILES-shaped parameters scaled down, with a step at or under `min` so every chunk
            // is read into its own buffer; zeros reach the cut at `max`, and an odd length the
            // unpaired last byte.
            let p = ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };
            let len = if odd_tail { len | 1 } else { len };
            let mut data = pseudo_random(len, seed);
            data[len / 3..len / 2].fill(0);
            let step = own_step.min(p.min as usize);
            let chunker = Chunker::with_step(Dribble { data: &data, step: read }, p, seed, step);
            let own = matches!(chunker.mode, Mode::Own(_));
            prop_assert!(own, "own-buffer mode");
            let ours: Vec<Vec<u8>> = chunker.collect::<Result<_, _>>().expect("chunk");
            prop_assert_eq!(ours, stream_cdc(&data, p, seed));
        }
    }

    proptest! {
        #[test]
        fn a_cutter_over_a_growing_buffer_cuts_as_the_chunker_reads(seed in any::<u64>(), len in 0usize..700_000, step in 1usize..300_000) {
            let p = ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };
            let data = pseudo_random(len, seed);
            let cutter = Cutter::new(p, seed);
            let (mut held, mut most, mut got) = (Vec::new(), 0, Vec::new());
            for piece in data.chunks(step) {
                held.extend_from_slice(piece);
                most = most.max(held.len());
                while let Some(n) = cutter.next_len(&held, false) {
                    got.push(held.drain(..n).collect::<Vec<u8>>());
                }
            }
            while let Some(n) = cutter.next_len(&held, true) {
                got.push(held.drain(..n).collect::<Vec<u8>>());
            }
            prop_assert!(most < p.max as usize + step);
            prop_assert_eq!(got, stream_cdc(&data, p, seed));
        }
    }

    #[test]
    fn manifest_params_are_valid() {
        assert!(ChunkerParams::MANIFEST.validate().is_ok());
    }

    #[test]
    fn file_chunks_get_their_own_buffers_and_dump_chunks_share_one() {
        let data = pseudo_random(10, 1);
        let files = Chunker::new(&data[..], ChunkerParams::FILES, 1);
        assert!(matches!(files.mode, Mode::Own(_)));
        let dumps = Chunker::new(&data[..], ChunkerParams::DUMPS, 1);
        assert!(matches!(dumps.mode, Mode::Shared(_)));
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
        let own = ChunkerParams {
            min: 2048,
            avg: 4096,
            max: 16384,
        };
        let flaky = || Flaky {
            data: &long,
            calls: 0,
        };
        let err = Chunker::with_step(flaky(), own, 9, 1024)
            .collect::<Result<Vec<_>, _>>()
            .expect_err("a failing read ends an own-buffer stream with its error");
        assert_eq!(err.to_string(), "disk gone");
        let read: Vec<u8> = Chunker::with_step(flaky(), own, 9, 1024)
            .map_while(Result::ok)
            .flatten()
            .collect();
        assert_eq!(
            read[..],
            long[..read.len()],
            "chunks before the error are whole and in order"
        );
        assert!(!read.is_empty());
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
