//! Restore reads gathered by pack: a `ReadChunks` plan is taken in *windows* of consecutive
//! entries, and each window's blobs are read with one ranged GET per stretch of a pack, whatever
//! order the plan lists them in.
//!
//! Why: an agent asks in backup order, which is pack order only for chunks stored by one backup.
//! After a rewritten dump changed ~1% of its rows, about one dump chunk in five was stored by the
//! later backup, so the restore's plan alternates between the packs of the two backups every few
//! entries. Reading each run of same-pack neighbours with its own GET made ~30,000 GETs for a
//! 2.5 GiB restore (on the local store each an open, a `statx`, a read and a close on a blocking
//! thread), a third of the controller's CPU. A window reads each pack's part once.
//!
//! Bounds (memory is the window, whatever the request): a window holds at most
//! [`WINDOW_BLOB_BYTES`] of blobs (a single larger blob is a window of its own); a read goes on
//! through a gap between two blobs of one pack only if the gap is at most [`RUN_GAP`] and the gaps
//! read in the window stay within its blob bytes, so a window reads at most twice what it serves.
//! Nothing here checks blobs: the caller verifies every blob against its recorded hash and reads
//! one that fails (or whose GET failed) on its own, which is where relocation and failover live.

use lifeboat_common::ids::ChunkId;

use crate::catalog::chunks::ChunkLocation;

/// Largest gap between two blobs read by one GET (the gap's bytes are read and dropped).
pub const RUN_GAP: u64 = 64 << 10;
/// Most bytes of blobs one window serves (one larger blob is served alone). A stream holds one
/// window being read and one queued for its client: at most 4 × this with the gaps, which is
/// what [`crate::read_limit::MAX_STREAM_WEIGHT`] weighs it at.
pub const WINDOW_BLOB_BYTES: u64 = 2 << 20;

/// One ranged GET: `start..end` of `pack_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span<'a> {
    pub pack_key: &'a str,
    pub start: u64,
    pub end: u64,
}

/// The next window of a plan: its first `len` entries, the GETs that serve them, and for each
/// entry the index of its span.
#[derive(Debug, PartialEq, Eq)]
pub struct Window<'a> {
    pub len: usize,
    pub spans: Vec<Span<'a>>,
    pub span_of: Vec<usize>,
}

/// Plans the window at the start of `plan` (empty plan: an empty window).
pub fn next_window(plan: &[(ChunkId, ChunkLocation)]) -> Window<'_> {
    let mut len = 0;
    let mut blobs = 0u64;
    for (_, loc) in plan {
        let bytes = u64::from(loc.length);
        if len > 0 && blobs + bytes > WINDOW_BLOB_BYTES {
            break;
        }
        blobs += bytes;
        len += 1;
    }
    let entries = &plan[..len];
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by_key(|&i| (entries[i].1.pack_key.as_str(), entries[i].1.offset));
    let mut spans: Vec<Span<'_>> = Vec::new();
    let mut span_of = vec![0; len];
    let mut gaps = 0u64;
    for i in order {
        let loc = &entries[i].1;
        let end = loc.offset + u64::from(loc.length);
        // Sorted by pack, then offset: an entry can only extend the last span.
        let joins = spans.last_mut().filter(|s| s.pack_key == loc.pack_key);
        match joins {
            Some(s) if loc.offset.saturating_sub(s.end) <= RUN_GAP.min(blobs - gaps) => {
                gaps += loc.offset.saturating_sub(s.end);
                s.end = s.end.max(end);
            }
            _ => spans.push(Span {
                pack_key: &loc.pack_key,
                start: loc.offset,
                end,
            }),
        }
        span_of[i] = spans.len() - 1;
    }
    Window {
        len,
        spans,
        span_of,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: &str, offset: u64, length: u32) -> (ChunkId, ChunkLocation) {
        (
            ChunkId([offset as u8; 32]),
            ChunkLocation {
                pack_key: pack.into(),
                offset,
                length,
                blob_hash: [0; 32],
            },
        )
    }

    fn span(pack_key: &str, start: u64, end: u64) -> Span<'_> {
        Span {
            pack_key,
            start,
            end,
        }
    }

    #[test]
    fn entries_alternating_between_two_packs_are_read_with_one_get_per_pack() {
        // A rewritten dump: old chunks from pack "a", changed ones from pack "b", interleaved.
        let plan = vec![
            loc("a", 0, 100),
            loc("a", 100, 100),
            loc("b", 0, 50),
            loc("a", 200, 100),
            loc("b", 50, 50),
            loc("a", 300, 100),
        ];
        let w = next_window(&plan);
        assert_eq!(w.len, 6);
        assert_eq!(w.spans, [span("a", 0, 400), span("b", 0, 100)]);
        assert_eq!(w.span_of, [0, 0, 1, 0, 1, 0]);
    }

    #[test]
    fn a_gap_too_wide_or_beyond_the_window_budget_starts_another_get() {
        let plan = vec![loc("a", 0, 100), loc("a", 100 + RUN_GAP + 1, 100)];
        let w = next_window(&plan);
        assert_eq!(w.spans.len(), 2, "gap wider than RUN_GAP");
        // Gaps within RUN_GAP but larger than the blobs the window serves are not read through.
        let plan = vec![loc("a", 0, 100), loc("a", 1_000, 100), loc("a", 1_150, 100)];
        let w = next_window(&plan);
        assert_eq!(w.spans, [span("a", 0, 100), span("a", 1_000, 1_250)]);
        assert_eq!(w.span_of, [0, 1, 1]);
    }

    #[test]
    fn a_window_stops_at_its_byte_budget_and_a_large_blob_goes_alone() {
        let half = u32::try_from(WINDOW_BLOB_BYTES / 2).expect("fits");
        let plan = vec![
            loc("a", 0, half),
            loc("a", u64::from(half), half),
            loc("a", 2 * u64::from(half), 1),
        ];
        assert_eq!(next_window(&plan).len, 2);
        let big = u32::try_from(3 * WINDOW_BLOB_BYTES).expect("fits");
        let plan = vec![loc("a", 0, big), loc("a", u64::from(big), 1)];
        let w = next_window(&plan);
        assert_eq!(w.len, 1);
        assert_eq!(w.spans, [span("a", 0, u64::from(big))]);
        assert_eq!(next_window(&[]).len, 0);
    }

    #[test]
    fn a_blob_listed_twice_is_read_once() {
        let plan = vec![loc("a", 0, 100), loc("a", 100, 100), loc("a", 0, 100)];
        let w = next_window(&plan);
        assert_eq!(w.spans, [span("a", 0, 200)]);
        assert_eq!(w.span_of, [0, 0, 0]);
    }
}
