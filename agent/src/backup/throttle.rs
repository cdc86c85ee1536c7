//! The upload bandwidth limit of a policy (`bandwidth_bytes_per_sec`), so a backup does not
//! saturate a VM's uplink.
//!
//! Pacing, not averaging after the fact: before an upload of `b` bytes the throttle waits until
//! the time since the first upload is at least (everything sent so far + `b`) / rate. So at
//! every instant — and over the whole transfer — the bytes sent never exceed rate × elapsed;
//! the price is that the first batch also waits its share. Batches are capped to about half a
//! second of the rate (never below [`MIN_BATCH`]), so the pacing is smooth and memory is not
//! held in a large batch waiting for its turn.

use std::time::{Duration, Instant};

/// The smallest batch the throttle asks for (one chunk is always allowed, whatever its size).
pub const MIN_BATCH: usize = 256 << 10;

#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    started: Option<Instant>,
    sent: u64,
}

impl Throttle {
    /// `rate` in bytes per second; `None` for 0 (unlimited).
    pub fn new(rate: u64) -> Option<Throttle> {
        (rate > 0).then_some(Throttle {
            rate,
            started: None,
            sent: 0,
        })
    }

    /// The largest batch (plaintext bytes) to collect before uploading.
    pub fn batch_bytes(&self, default: usize) -> usize {
        usize::try_from(self.rate / 2)
            .unwrap_or(usize::MAX)
            .clamp(MIN_BATCH, default.max(MIN_BATCH))
    }

    /// How long to wait before sending `bytes` at `now` (and records them as sent).
    pub fn delay(&mut self, bytes: u64, now: Instant) -> Duration {
        let started = *self.started.get_or_insert(now);
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        due.saturating_sub(now.duration_since(started))
    }

    /// Waits until `bytes` may be sent.
    pub async fn before_send(&mut self, bytes: u64) {
        let wait = self.delay(bytes, Instant::now());
        if !wait.is_zero() {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                bytes,
                "upload paced by the bandwidth limit"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_bytes_never_exceed_rate_times_elapsed() {
        let mut t = Throttle::new(1_000_000).expect("limited");
        let t0 = Instant::now();
        // Three 500 kB uploads requested at once: due at 0.5 s, 1.0 s, 1.5 s after the start.
        assert_eq!(t.delay(500_000, t0), Duration::from_millis(500));
        assert_eq!(t.delay(500_000, t0), Duration::from_millis(1000));
        let later = t0 + Duration::from_millis(1700);
        assert_eq!(
            t.delay(500_000, later),
            Duration::ZERO,
            "behind schedule: no wait"
        );
        assert!(Throttle::new(0).is_none(), "0 is unlimited");
    }

    #[test]
    fn batches_are_half_a_second_within_bounds() {
        let t = Throttle::new(10 << 20).expect("limited");
        assert_eq!(t.batch_bytes(8 << 20), 5 << 20);
        let slow = Throttle::new(100_000).expect("limited");
        assert_eq!(slow.batch_bytes(8 << 20), MIN_BATCH);
        let fast = Throttle::new(1 << 30).expect("limited");
        assert_eq!(fast.batch_bytes(8 << 20), 8 << 20);
    }
}
