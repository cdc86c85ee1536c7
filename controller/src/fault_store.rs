//! A fault-injecting [`ObjectStore`] wrapper, for tests (compiled with `cfg(test)` or the
//! `testing` feature only).
//!
//! Wraps any `Arc<dyn ObjectStore>` and, per kind of call ([`Op`]) and optionally per key
//! prefix, can:
//! - fail the first N calls ([`Fault::FailFirst`]) or every call ([`Fault::FailAll`]);
//! - hang: never answer, until the caller drops the future ([`Fault::Hang`]), to test deadlines;
//! - lose the answer of a put that did land ([`Fault::LoseResponse`]), the classic "was my
//!   upload stored?" case that idempotent retries must handle;
//! - cut a put off: store only a prefix of the bytes and fail ([`Fault::Truncate`]), a torn
//!   write on a store without atomic puts (S3 and the local store are atomic; this shows what
//!   the controller makes of one anyway).
//!
//! Every call is counted per [`Op`], so a test can assert that retries are bounded.
//! Injected failures are `object_store::Error::Generic` with store name `"fault-injection"`.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tokio_stream::Stream;

type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// The kinds of call a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
    Copy,
}

const OPS: [Op; 6] = [Op::Put, Op::Get, Op::Head, Op::List, Op::Delete, Op::Copy];

/// What happens to a targeted call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The first `n` matching calls fail; later ones pass.
    FailFirst(u64),
    /// Every matching call fails.
    FailAll,
    /// Matching calls never complete (until dropped).
    Hang,
    /// Puts land in the inner store, then report failure. Other ops: like `FailAll`.
    LoseResponse,
    /// Puts store only their first `n` bytes, then report failure. Other ops: like `FailAll`.
    Truncate(usize),
}

#[derive(Debug)]
struct Rule {
    op: Op,
    prefix: String,
    fault: Fault,
    matched: u64,
}

/// The wrapper; share it as `Arc<FaultStore>` and keep a handle to change faults mid-test.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    calls: [AtomicU64; 6],
}

/// What [`FaultStore::decide`] says a call should do.
enum Verdict {
    Pass,
    Fail,
    Hang,
    Lose,
    Truncate(usize),
}

fn injected(op: Op, key: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault-injection",
        source: format!("injected {op:?} failure for {key}").into(),
    }
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<FaultStore> {
        Arc::new(FaultStore {
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Default::default(),
        })
    }

    /// Adds a fault for calls of kind `op` on keys starting with `prefix` ("" = every key).
    pub fn inject(&self, op: Op, prefix: &str, fault: Fault) {
        self.lock().push(Rule {
            op,
            prefix: prefix.to_owned(),
            fault,
            matched: 0,
        });
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many calls of kind `op` were made (passed or not).
    pub fn calls(&self, op: Op) -> u64 {
        let i = OPS.iter().position(|o| *o == op).unwrap_or(0);
        self.calls[i].load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        // A test that panicked while holding the lock already failed; keep going for the report.
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decide(&self, op: Op, key: &str) -> Verdict {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.calls[i].fetch_add(1, Ordering::SeqCst);
        }
        let mut rules = self.lock();
        let Some(rule) = rules
            .iter_mut()
            .find(|r| r.op == op && key.starts_with(&r.prefix))
        else {
            return Verdict::Pass;
        };
        rule.matched += 1;
        match rule.fault {
            Fault::FailFirst(n) if rule.matched > n => Verdict::Pass,
            Fault::FailFirst(_) | Fault::FailAll => Verdict::Fail,
            Fault::Hang => Verdict::Hang,
            Fault::LoseResponse if op == Op::Put => Verdict::Lose,
            Fault::Truncate(n) if op == Op::Put => Verdict::Truncate(n),
            Fault::LoseResponse | Fault::Truncate(_) => Verdict::Fail,
        }
    }

    /// The common gate for calls that return a future.
    async fn gate(&self, op: Op, key: &str) -> Result<()> {
        match self.decide(op, key) {
            Verdict::Pass => Ok(()),
            Verdict::Hang => std::future::pending().await,
            Verdict::Fail | Verdict::Lose | Verdict::Truncate(_) => Err(injected(op, key)),
        }
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[tonic::async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let key = location.as_ref();
        match self.decide(Op::Put, key) {
            Verdict::Pass => self.inner.put_opts(location, payload, opts).await,
            Verdict::Hang => std::future::pending().await,
            Verdict::Fail => Err(injected(Op::Put, key)),
            Verdict::Lose => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(Op::Put, key))
            }
            Verdict::Truncate(n) => {
                let bytes = Bytes::from(payload);
                let cut = bytes.slice(..n.min(bytes.len()));
                self.inner
                    .put_opts(location, PutPayload::from_bytes(cut), opts)
                    .await?;
                Err(injected(Op::Put, key))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.gate(Op::Put, location.as_ref()).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        self.gate(op, location.as_ref()).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.gate(Op::Get, location.as_ref()).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<Result<Path>>) -> BoxStream<Result<Path>> {
        match self.decide(Op::Delete, "") {
            Verdict::Pass => self.inner.delete_stream(locations),
            Verdict::Hang => Box::pin(tokio_stream::pending()),
            _ => Box::pin(tokio_stream::once(Err(injected(Op::Delete, "")))),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<Result<ObjectMeta>> {
        let key = prefix.map(|p| p.as_ref().to_owned()).unwrap_or_default();
        match self.decide(Op::List, &key) {
            Verdict::Pass => self.inner.list(prefix),
            Verdict::Hang => Box::pin(tokio_stream::pending()),
            _ => Box::pin(tokio_stream::once(Err(injected(Op::List, &key)))),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let key = prefix.map(|p| p.as_ref().to_owned()).unwrap_or_default();
        self.gate(Op::List, &key).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate(Op::Copy, to.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.gate(Op::Copy, to.as_ref()).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests;
