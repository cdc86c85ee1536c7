//! Deterministic test trees and exact tree comparison (type, mode, mtime, contents, link target).

use std::collections::BTreeMap;
use std::fs;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// xorshift64*: deterministic, fast, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes `len` bytes: random when `compressible` is false, otherwise text-like with repeats.
pub fn write_data(path: &Path, len: usize, seed: u64, compressible: bool) {
    let mut rng = Rng::new(seed);
    let mut f = fs::File::create(path).expect("create data file");
    let words: [&[u8]; 8] = [
        b"<div class=\"x\">",
        b"lifeboat ",
        b"restore ",
        b"</div>\n",
        b"nginx ",
        b"0123456789 ",
        b"\xc3\xa9t\xc3\xa9 ",
        b"backup ",
    ];
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        if compressible {
            let mut i = 0;
            while i < n {
                let w = words[rng.below(8) as usize];
                let k = w.len().min(n - i);
                buf[i..i + k].copy_from_slice(&w[..k]);
                i += k;
            }
        } else {
            rng.fill(&mut buf[..n]);
        }
        f.write_all(&buf[..n]).expect("write data");
        left -= n;
    }
}

fn set_mtime(path: &Path, secs: u64) {
    let t = UNIX_EPOCH + Duration::new(secs, 123_456_789);
    let f = fs::File::options()
        .read(true)
        .open(path)
        .expect("open for mtime");
    f.set_modified(t).expect("set mtime");
}

/// Builds the Foundation's sample tree under `root` (created): nested directories, an empty
/// directory, an empty file, a large file of `big_len` bytes, symlinks (relative, absolute,
/// dangling), names with spaces and UTF-8, modes 0600/0755/0700, fixed mtimes.
pub fn build_sample_tree(root: &Path, big_len: usize) {
    fs::create_dir_all(root.join("html/assets/css")).expect("mkdir");
    fs::create_dir_all(root.join("html/empty dir")).expect("mkdir");
    fs::create_dir_all(root.join("conf/sites-available")).expect("mkdir");
    fs::create_dir_all(root.join("conf/sites-enabled")).expect("mkdir");
    fs::create_dir_all(root.join("privé")).expect("mkdir");
    write_data(&root.join("html/index.html"), 5_000, 1, true);
    write_data(&root.join("html/assets/css/site.css"), 70_000, 2, true);
    write_data(&root.join("html/assets/logo.png"), 300_000, 3, false);
    write_data(&root.join("html/big video.bin"), big_len, 4, false);
    fs::write(root.join("html/empty.txt"), b"").expect("empty file");
    write_data(&root.join("html/ünïcødé naïve ☃.txt"), 1_234, 5, true);
    write_data(&root.join("conf/sites-available/default"), 900, 6, true);
    write_data(&root.join("privé/secret.key"), 64, 7, false);
    write_data(&root.join("html/run.sh"), 200, 8, true);
    for i in 0..40 {
        write_data(
            &root.join(format!("html/page-{i:02}.html")),
            2_000 + i * 997,
            100 + i as u64,
            true,
        );
    }
    symlink(
        "../sites-available/default",
        root.join("conf/sites-enabled/default"),
    )
    .expect("symlink");
    symlink("/etc/hostname", root.join("conf/absolute-link")).expect("symlink");
    symlink("does/not/exist", root.join("html/dangling")).expect("symlink");
    fs::set_permissions(
        root.join("privé/secret.key"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    fs::set_permissions(root.join("html/run.sh"), fs::Permissions::from_mode(0o755))
        .expect("chmod");
    fs::set_permissions(root.join("privé"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fix_mtimes(root, 1_700_000_000);
}

/// Sets every file's and directory's mtime to a distinct fixed value, directories last.
pub fn fix_mtimes(root: &Path, base: u64) {
    let mut dirs = Vec::new();
    let mut n = 0;
    for (rel, meta) in walk(root) {
        let p = root.join(&rel);
        n += 1;
        if meta.file_type().is_dir() {
            dirs.push((p, base + n * 60));
        } else if meta.file_type().is_file() {
            set_mtime(&p, base + n * 60);
        }
    }
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, t) in dirs {
        set_mtime(&p, t);
    }
}

/// Every path under `root` (relative; `""` is the root), without following symlinks, sorted.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        if meta.is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(rel.join(e.expect("dir entry").file_name()));
            }
        }
        out.push((rel, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What a comparison looks at for one path.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub digest: u64,
    pub link: Option<PathBuf>,
}

fn digest(path: &Path) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    let mut f = fs::File::open(path).expect("open for digest");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read for digest");
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// Describes a tree for comparison. Symlink mtimes are not compared (not every filesystem keeps them).
pub fn describe_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    walk(root)
        .into_iter()
        .map(|(rel, m)| {
            let p = root.join(&rel);
            let ft = m.file_type();
            let (kind, digest, link, mtime) = if ft.is_symlink() {
                (
                    "symlink",
                    0,
                    Some(fs::read_link(&p).expect("readlink")),
                    (0, 0),
                )
            } else if ft.is_dir() {
                ("dir", 0, None, (m.mtime(), m.mtime_nsec()))
            } else {
                ("file", digest(&p), None, (m.mtime(), m.mtime_nsec()))
            };
            let size = if ft.is_file() { m.len() } else { 0 };
            (
                rel,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    mtime,
                    size,
                    digest,
                    link,
                },
            )
        })
        .collect()
}

/// Asserts two trees are identical, listing every difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = describe_tree(expected);
    let b = describe_tree(actual);
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing: {}", k.display())),
            Some(w) if w != v => diffs.push(format!(
                "differs: {}\n  expected {v:?}\n  actual   {w:?}",
                k.display()
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("unexpected: {}", k.display()));
        }
    }
    assert!(
        diffs.is_empty(),
        "trees {} and {} differ:\n{}",
        expected.display(),
        actual.display(),
        diffs.join("\n")
    );
}

/// Where `restore --to DIR` puts a root: `DIR/<root without its leading '/'>`.
pub fn restored_root(to: &Path, root: &Path) -> PathBuf {
    to.join(root.strip_prefix("/").expect("absolute root"))
}

/// Recursively copies a tree, keeping modes, mtimes and symlinks (via `cp -a`).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp -a");
    assert!(st.success(), "cp -a failed");
}
