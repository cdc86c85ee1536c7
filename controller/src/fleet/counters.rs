//! Prometheus counters of what backups brought in, per (agent, source), since this controller
//! started: logical bytes backed up, plaintext bytes uploaded (new chunks), bytes deduplicated
//! (the difference), and snapshots committed.
//!
//! Counters in memory, by Prometheus convention: they only grow while the process runs and
//! start from zero after a restart (`rate()` and `increase()` handle resets). Summing the
//! catalog instead would make them fall when retention and GC remove snapshots, which a
//! counter must never do. Labels are agent and source only (bounded by the fleet), never a
//! snapshot or a path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub snapshots: u64,
    pub logical_bytes: u64,
    pub uploaded_bytes: u64,
    pub deduplicated_bytes: u64,
}

/// A counter family: name, help text, and the value it takes from [`Totals`].
type Family = (&'static str, &'static str, fn(&Totals) -> u64);

#[derive(Debug, Default)]
pub struct BackupCounters {
    by_source: Mutex<BTreeMap<(String, String), Totals>>,
}

impl BackupCounters {
    /// Counts one committed snapshot.
    pub fn add(&self, agent: &str, source: &str, logical_bytes: u64, new_logical_bytes: u64) {
        let mut m = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let t = m.entry((agent.to_owned(), source.to_owned())).or_default();
        t.snapshots += 1;
        t.logical_bytes += logical_bytes;
        t.uploaded_bytes += new_logical_bytes;
        t.deduplicated_bytes += logical_bytes.saturating_sub(new_logical_bytes);
    }

    pub fn get(&self, agent: &str, source: &str) -> Totals {
        let m = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(agent.to_owned(), source.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// The exposition text of the four counter families.
    pub fn prometheus_text(&self) -> String {
        let m = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let families: [Family; 4] = [
            (
                "lifeboat_backup_snapshots_total",
                "Snapshots committed since the controller started.",
                |t| t.snapshots,
            ),
            (
                "lifeboat_backup_logical_bytes_total",
                "Plaintext bytes of committed snapshots (what was backed up).",
                |t| t.logical_bytes,
            ),
            (
                "lifeboat_backup_uploaded_bytes_total",
                "Plaintext bytes of new chunks uploaded by committed snapshots.",
                |t| t.uploaded_bytes,
            ),
            (
                "lifeboat_backup_deduplicated_bytes_total",
                "Plaintext bytes of committed snapshots that deduplication did not upload.",
                |t| t.deduplicated_bytes,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in families {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
            for ((agent, source), t) in m.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{agent=\"{}\",source=\"{}\"}} {}",
                    super::status::label(agent),
                    super::status::label(source),
                    value(t)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_per_source_and_render_as_counters() {
        let c = BackupCounters::default();
        c.add("web-01", "web", 1000, 100);
        c.add("web-01", "web", 1000, 0);
        c.add("db-01", "db", 500, 500);
        let t = c.get("web-01", "web");
        assert_eq!(
            t,
            Totals {
                snapshots: 2,
                logical_bytes: 2000,
                uploaded_bytes: 100,
                deduplicated_bytes: 1900
            }
        );
        let text = c.prometheus_text();
        assert!(text.contains("# TYPE lifeboat_backup_uploaded_bytes_total counter"));
        assert!(text.contains(
            "lifeboat_backup_deduplicated_bytes_total{agent=\"web-01\",source=\"web\"} 1900"
        ));
        assert!(text.contains("lifeboat_backup_snapshots_total{agent=\"db-01\",source=\"db\"} 1"));
    }
}
