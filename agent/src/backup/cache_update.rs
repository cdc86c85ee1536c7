//! Recording a committed pass's files in the file cache.
//!
//! Runs after the commit (the cache must never name chunks of an uncommitted snapshot, ADR
//! 0012), on a blocking thread: sled and the scratch files both block. The files come from the
//! pass's scratch files in walk order ([`super::pass_files`]): each result that is cacheable,
//! its item for the key and the stat, and its chunk list read in pieces ([`super::spill`]), so
//! nothing here grows with the tree or with the largest file. Any failure only leaves the cache
//! with fewer entries, with a warning: the next backup reads those files again.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use super::pass_files::{ItemReader, Items, ResultReader, Results};
use super::read::{cache_stat, item_cache_key};
use super::spill::{ChunkLists, ListReader, Span};
use crate::cache::{CacheStat, FileCache, PutSource};

/// A pass's scratch files: the walk's items, the read's results, the files' chunk lists.
pub struct PassFiles {
    pub items: Arc<Items>,
    pub results: Results,
    pub lists: ChunkLists,
}

/// What the cache's keys are made of besides each item.
pub struct CacheKeys {
    pub stamp: [u8; 8],
    pub source: String,
    pub roots: Vec<PathBuf>,
}

/// Records every file the pass read whole in the file cache (see the module docs).
pub async fn update_cache(cache: Arc<dyn FileCache>, keys: CacheKeys, files: PassFiles) {
    let put = tokio::task::spawn_blocking(move || {
        let mut update = CacheUpdate {
            keys: &keys,
            items: files.items.reader(),
            results: files.results.reader(),
            lists: files.lists.reader(),
            span: Span::default(),
            at: 0,
        };
        if let Err(e) = cache.put_all(&mut update) {
            warn!(error = %e, "cannot read a file back from the backup's scratch files; the file cache misses the rest of this backup's files, which the next backup reads again");
        }
    });
    if let Err(e) = put.await {
        warn!(error = %e, "the file cache update stopped; the next backup reads these files again");
    }
}

/// The files a committed pass records in the cache, read from its scratch files.
struct CacheUpdate<'a> {
    keys: &'a CacheKeys,
    items: ItemReader,
    results: ResultReader,
    lists: ListReader<'a>,
    /// The current file's list, and how much of it was handed out.
    span: Span,
    at: u64,
}

impl PutSource for CacheUpdate<'_> {
    fn next_file(&mut self) -> io::Result<Option<(Vec<u8>, CacheStat, u64)>> {
        for r in self.results.by_ref() {
            let r = r?;
            if !r.cacheable {
                continue;
            }
            // Results come in walk order: the item is ahead in the walk, never behind.
            let item = loop {
                match self.items.next().transpose()? {
                    Some((i, item)) if i == r.index => break item,
                    Some(_) => continue,
                    None => return Err(io::Error::other("a file's result has no walk item")),
                }
            };
            let k = self.keys;
            let key = item_cache_key(&k.stamp, &k.source, &k.roots, &item);
            (self.span, self.at) = (r.span, 0);
            return Ok(Some((key, cache_stat(&item), r.span.count())));
        }
        Ok(None)
    }

    fn next_records(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let part = self.span.part(self.at, n as u64);
        if part.count() != n as u64 {
            return Err(io::Error::other("a chunk list asked past its end"));
        }
        self.at += part.count();
        self.lists.read_records(part, out)
    }
}
