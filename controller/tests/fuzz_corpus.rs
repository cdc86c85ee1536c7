//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz target bodies
//! (`fuzz/src/lib.rs`, included by path) on stable Rust: no nightly, no cargo-fuzz, seconds.
//!
//! A panic in any target on any corpus file fails the test; the file is named in the message so
//! that `cargo fuzz run <target> <file>` reproduces it.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    // The runtime value, as in common/tests/golden.rs.
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../fuzz/corpus")
    .join(target)
}

#[test]
fn every_fuzz_corpus_replays_without_panics() {
    let mut failures = Vec::new();
    for (name, run) in targets::TARGETS {
        let dir = corpus_dir(name);
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}; every target needs a corpus", dir.display()))
            .map(|e| e.expect("read corpus entry").path())
            .collect();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failures.push(format!("{name}: {}", f.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz targets panicked on: {failures:#?}"
    );
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let bins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for (name, _) in targets::TARGETS {
        let f = bins.join(format!("{name}.rs"));
        assert!(f.is_file(), "{} is missing", f.display());
    }
}

/// The seeds built with the real encoders go through every target; with
/// `LIFEBOAT_FUZZ_WRITE_SEEDS=1` they are also written to the corpus (to start a new one).
#[test]
fn seeds_from_the_real_encoders_pass() {
    let write = std::env::var_os("LIFEBOAT_FUZZ_WRITE_SEEDS").is_some();
    let seeds = targets::seeds();
    for (name, _) in targets::TARGETS {
        assert!(seeds.iter().any(|(n, _)| n == name), "no seed for {name}");
    }
    for (i, (name, data)) in seeds.iter().enumerate() {
        let (_, run) = targets::TARGETS
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("seed for unknown target {name}"));
        run(data);
        if write {
            let dir = corpus_dir(name);
            std::fs::create_dir_all(&dir).expect("create corpus dir");
            std::fs::write(dir.join(format!("seed-{i:02}")), data).expect("write seed");
        }
    }
}
