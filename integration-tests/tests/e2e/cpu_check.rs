//! `lifeboat-agent cpu-check`: measures every byte under --path, needs no config, and names a
//! bad directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::process::Command;

use lifeboat_integration_tests::bin;
use lifeboat_integration_tests::process::{describe, parse_json, run};
use lifeboat_integration_tests::tree::write_data;

#[test]
fn cpu_check_measures_every_byte_and_names_a_bad_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("www");
    fs::create_dir_all(root.join("sub")).expect("mkdir");
    write_data(&root.join("a.bin"), 300_000, 1, false);
    write_data(&root.join("sub/b.html"), 200_000, 2, true);
    fs::write(
        root.join("sub/shop.sql"),
        "INSERT INTO t VALUES (1);\n".repeat(4000),
    )
    .expect("write");
    let out = run(Command::new(bin("lifeboat-agent"))
        .args(["cpu-check", "--json", "--path"])
        .arg(&root));
    assert!(out.status.success(), "{}", describe(&out));
    let v = parse_json(&out);
    assert_eq!(v["files"], 3, "{v}");
    assert_eq!(v["bytes"], 300_000 + 200_000 + 26 * 4000, "{v}");
    assert!(v["mb_per_s_per_core"].as_f64().expect("rate") > 0.0, "{v}");
    assert!(
        v["ceiling_mb_per_s"].as_f64().expect("ceiling")
            >= v["mb_per_s_per_core"].as_f64().expect("rate"),
        "{v}"
    );
    // The restore's work is timed on the same blobs, apart from the backup's.
    assert!(
        v["restore_seconds"].as_f64().expect("restore time") > 0.0,
        "{v}"
    );
    assert!(
        v["restore_ceiling_mb_per_s"]
            .as_f64()
            .expect("restore ceiling")
            >= v["restore_mb_per_s_per_core"]
                .as_f64()
                .expect("restore rate"),
        "{v}"
    );

    let out = run(Command::new(bin("lifeboat-agent"))
        .args(["cpu-check", "--path"])
        .arg(tmp.path().join("missing")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing") && err.contains("--path"), "{err}");
}
