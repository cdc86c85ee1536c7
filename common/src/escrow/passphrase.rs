//! Escrow passphrases: the minimum strength, and reading one from a terminal (no echo) or a file.
//!
//! A stolen bucket lets an attacker guess offline, so the strength check is part of sealing
//! (ADR 0007). It is an estimate, deliberately conservative about patterns:
//! - at least [`MIN_CHARS`] characters;
//! - each character is worth `log2(pool)` bits, where the pool is the sum of the character
//!   classes present (lower 26, upper 26, digits 10, other ASCII 33, non-ASCII 100), except a
//!   character that repeats or continues a run (`aaa`, `abc`, `321`), which is worth 1 bit;
//! - a common word or keyboard pattern (`password`, `qwerty`, `lifeboat`, …) found anywhere,
//!   case-insensitively, is worth 8 bits in total;
//! - fewer than 6 different characters is refused outright;
//! - the estimate must reach [`MIN_BITS`].
//!
//! Four or more random words (`correct horse battery staple` style) and 12+ random characters
//! from mixed classes pass; `Password1234!`, `aaaaaaaaaaaaaaaa` and `abcdefghijklmnop` do not.
//!
//! Passphrases never come from argv (they would show in `ps` and shell history): a terminal
//! with echo off, or the first line of a file. They are never logged; [`Passphrase`] has no
//! `Debug` contents.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Minimum length, in characters.
pub const MIN_CHARS: usize = 12;
/// Minimum estimated entropy, in bits.
pub const MIN_BITS: f64 = 60.0;
/// Maximum length accepted (bytes), to bound what we hash and read.
pub const MAX_BYTES: usize = 1024;
const MIN_DISTINCT: usize = 6;

const COMMON: &[&str] = &[
    "password",
    "passwort",
    "passphrase",
    "lifeboat",
    "qwertz",
    "qwerty",
    "azerty",
    "asdf",
    "zxcv",
    "letmein",
    "welcome",
    "admin",
    "secret",
    "iloveyou",
    "monkey",
    "dragon",
    "master",
    "login",
    "changeme",
    "backup",
    "football",
    "baseball",
    "sunshine",
    "princess",
    "1234",
];

/// An operator's passphrase; never printed.
#[derive(Clone)]
pub struct Passphrase(String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Wraps a passphrase as typed (no strength check: [`super::seal`] checks, `open` need not).
    pub fn new(s: String) -> Self {
        Passphrase(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Why a passphrase was refused for sealing.
#[derive(Debug, Error)]
#[error(
    "passphrase too weak: {reason}. Required: at least {MIN_CHARS} characters and an estimated \
     {MIN_BITS:.0} bits or more, e.g. five random words, or 12+ random characters mixing upper and \
     lower case, digits and symbols; no repeated, sequential or common patterns. Nothing was stored"
)]
pub struct WeakPassphrase {
    pub reason: String,
}

/// Problems reading a passphrase.
#[derive(Debug, Error)]
pub enum PassphraseError {
    #[error("cannot read passphrase file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("passphrase file {path} has an empty first line")]
    Empty { path: PathBuf },
    #[error("passphrase file {path} is not UTF-8 text")]
    NotUtf8 { path: PathBuf },
    #[error("passphrase is longer than {MAX_BYTES} bytes")]
    TooLong,
    #[error(
        "no terminal to read the passphrase from (stdin is not a TTY): pass --passphrase-file FILE"
    )]
    NoTerminal,
    #[error("cannot read the passphrase from the terminal: {0}")]
    Terminal(std::io::Error),
    #[error("the two passphrases differ; nothing was done, try again")]
    Mismatch,
    #[error("empty passphrase")]
    EmptyTyped,
}

/// Where a passphrase comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The first line of a file (trailing `\n` / `\r\n` stripped).
    File(&'a Path),
    /// The controlling terminal with echo off; `confirm` asks twice.
    Terminal { prompt: &'a str, confirm: bool },
}

/// Reads a passphrase from `source`.
pub fn read(source: Source<'_>) -> Result<Passphrase, PassphraseError> {
    match source {
        Source::File(path) => read_file(path),
        Source::Terminal { prompt, confirm } => read_terminal(prompt, confirm),
    }
}

fn read_file(path: &Path) -> Result<Passphrase, PassphraseError> {
    let bytes = std::fs::read(path).map_err(|source| PassphraseError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(PassphraseError::Empty {
            path: path.to_owned(),
        });
    }
    if line.len() > MAX_BYTES {
        return Err(PassphraseError::TooLong);
    }
    let s = std::str::from_utf8(line).map_err(|_| PassphraseError::NotUtf8 {
        path: path.to_owned(),
    })?;
    Ok(Passphrase(s.to_owned()))
}

fn read_terminal(prompt: &str, confirm: bool) -> Result<Passphrase, PassphraseError> {
    if !std::io::stdin().is_terminal() {
        return Err(PassphraseError::NoTerminal);
    }
    let first = rpassword::prompt_password(prompt).map_err(PassphraseError::Terminal)?;
    if first.is_empty() {
        return Err(PassphraseError::EmptyTyped);
    }
    if first.len() > MAX_BYTES {
        return Err(PassphraseError::TooLong);
    }
    if confirm {
        let again = rpassword::prompt_password("Repeat the passphrase: ")
            .map_err(PassphraseError::Terminal)?;
        if again != first {
            return Err(PassphraseError::Mismatch);
        }
    }
    Ok(Passphrase(first))
}

/// Checks a passphrase against the minimum strength (module docs).
pub fn check_strength(p: &str) -> Result<(), WeakPassphrase> {
    let weak = |reason: String| Err(WeakPassphrase { reason });
    let n = p.chars().count();
    if n < MIN_CHARS {
        return weak(format!("it has {n} characters"));
    }
    if p.len() > MAX_BYTES {
        return weak(format!("it is longer than {MAX_BYTES} bytes"));
    }
    let mut distinct: Vec<char> = p.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT {
        return weak(format!(
            "it uses only {} different characters",
            distinct.len()
        ));
    }
    let bits = estimate_bits(p);
    if bits < MIN_BITS {
        return weak(format!(
            "its estimated strength is {bits:.0} bits (repeated, sequential or common patterns count little)"
        ));
    }
    Ok(())
}

/// The entropy estimate of the module docs, in bits.
pub fn estimate_bits(p: &str) -> f64 {
    let chars: Vec<char> = p.chars().collect();
    let pool: u32 = [
        (chars.iter().any(char::is_ascii_lowercase), 26),
        (chars.iter().any(char::is_ascii_uppercase), 26),
        (chars.iter().any(char::is_ascii_digit), 10),
        (
            chars
                .iter()
                .any(|c| c.is_ascii() && !c.is_ascii_alphanumeric()),
            33,
        ),
        (chars.iter().any(|c| !c.is_ascii()), 100),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, n)| n)
    .sum();
    let per_char = f64::from(pool.max(2)).log2();
    let covered = common_cover(p);
    let mut bits = 0.0;
    let mut in_common = false;
    for (i, c) in chars.iter().enumerate() {
        if covered[i] {
            if !in_common {
                bits += 8.0;
            }
            in_common = true;
            continue;
        }
        in_common = false;
        let patterned = i > 0 && {
            let (a, b) = (chars[i - 1] as i64, *c as i64);
            (a - b).abs() <= 1
        };
        bits += if patterned { 1.0 } else { per_char };
    }
    bits
}

/// Which characters (by char index) belong to a common word or pattern.
fn common_cover(p: &str) -> Vec<bool> {
    let lower: Vec<char> = p.chars().flat_map(char::to_lowercase).collect();
    let n = p.chars().count();
    let mut cover = vec![false; n];
    if lower.len() != n {
        // Lowercasing changed the length (rare non-ASCII): skip the word check.
        return cover;
    }
    for word in COMMON {
        let w: Vec<char> = word.chars().collect();
        for start in 0..n.saturating_sub(w.len() - 1) {
            if lower[start..start + w.len()] == w[..] {
                cover[start..start + w.len()]
                    .iter_mut()
                    .for_each(|c| *c = true);
            }
        }
    }
    cover
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passphrases_are_refused_with_a_reason() {
        for p in [
            "short",
            "aaaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "Password1234!",
            "qwertyqwertyqwerty",
            "lifeboatlifeboat1",
            "abababababababab",
            "0123456789876543",
        ] {
            let e = check_strength(p).expect_err(p);
            assert!(e.to_string().contains("at least 12 characters"), "{e}");
        }
    }

    #[test]
    fn strong_passphrases_pass() {
        for p in [
            "correct horse battery staple",
            "gT7#pQ2!vR9@xL",
            "vessel-orbit-maple-quarry-tundra",
            "Zürich Bärengraben 1291!",
        ] {
            check_strength(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn file_reads_first_line_without_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("p");
        std::fs::write(&f, "correct horse battery staple\r\nsecond line\n").expect("write");
        let p = read(Source::File(&f)).expect("read");
        assert_eq!(p.as_str(), "correct horse battery staple");
        assert_eq!(format!("{p:?}"), "Passphrase(..)");
        std::fs::write(&f, "\nx").expect("write");
        assert!(matches!(
            read(Source::File(&f)),
            Err(PassphraseError::Empty { .. })
        ));
    }
}
