//! The paper form of the master key: checksummed text an operator can print, keep in a safe and
//! type back in, with every single mistyped character detected and located.
//!
//! Format, version 1 (do not modify):
//!
//! ```text
//! lifeboat master key, paper form v1
//! 1: XXXX XXXX XXXX XXXX  CC
//! 2: XXXX XXXX XXXX XXXX  CC
//! 3: XXXX XXXX XXXX XXXX  CC
//! 4: XXXX XXXX XXXX XXXX  CC
//! ```
//!
//! - Data: the 32-byte key followed by an 8-byte whole-key check (the first 8 bytes of BLAKE3
//!   `derive_key("lifeboat 2026-11 paper key check v1", key)`), 40 bytes = 64 Crockford base32
//!   characters (`0-9A-Z` without `I L O U`), most significant bits first, 16 per line in four
//!   groups of four.
//! - Per line, two check symbols from Crockford's mod-37 check alphabet (`0-9A-Z` without
//!   `I L O U`, then `* ~ $ = U`): `S1 = Σ v_i mod 37` and `S2 = Σ (i+1)·v_i mod 37` over the
//!   line's 16 values. A single substitution at position i changes `S1` by `d ≠ 0` and `S2` by
//!   `(i+1)·d` (37 is prime and |d| < 37, so neither vanishes); the position is
//!   `(i+1) = ΔS2 / ΔS1 mod 37`, which is how the error is located to line, group and character.
//!   A mismatch in only one of the two sums means the check symbols themselves were mistyped.
//! - The whole-key check catches what per-line checks cannot: lines swapped or taken from
//!   different keys.
//!
//! Reading is tolerant: case, spaces, the header and any line not starting with a digit (blank
//! lines, notes) do not matter, and the usual Crockford aliases are accepted (`O` = 0,
//! `I`/`L` = 1).

use thiserror::Error;

use crate::keys::{MASTER_KEY_LEN, MasterKey};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CHECK_ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";
const CHECK_CTX: &str = "lifeboat 2026-11 paper key check v1";
/// The first line of a paper export.
pub const HEADER: &str = "lifeboat master key, paper form v1";
const LINES: usize = 4;
const PER_LINE: usize = 16;
const GROUP: usize = 4;
const CHECK_LEN: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PaperError {
    #[error(
        "paper key: expected {LINES} numbered lines (\"1: XXXX XXXX XXXX XXXX  CC\"), found {0}"
    )]
    LineCount(usize),
    #[error("paper key: line {line} is missing or out of order (lines must be numbered 1 to 4)")]
    LineNumber { line: usize },
    #[error(
        "paper key: line {line} has {found} characters after the line number, expected 18 (16 key characters and 2 check characters)"
    )]
    LineLength { line: usize, found: usize },
    #[error(
        "paper key: line {line}, group {group}, character {pos}: {ch:?} is not a valid character"
    )]
    BadChar {
        line: usize,
        group: usize,
        pos: usize,
        ch: char,
    },
    #[error("paper key: line {line}: check character {ch:?} is not a valid check character")]
    BadCheckChar { line: usize, ch: char },
    #[error(
        "paper key: mistyped character at line {line}, group {group}, character {pos} (the line's check code does not match); compare it with the paper"
    )]
    Typo {
        line: usize,
        group: usize,
        pos: usize,
    },
    #[error(
        "paper key: line {line} does not match its check code (more than one mistyped character, or the check code itself); compare the whole line with the paper"
    )]
    LineCheck { line: usize },
    #[error(
        "paper key: every line checks out but the whole-key check fails: lines swapped or from different keys"
    )]
    WholeKey,
}

fn checks(values: &[u8]) -> (u32, u32) {
    values.iter().enumerate().fold((0, 0), |(s1, s2), (i, v)| {
        let v = u32::from(*v);
        ((s1 + v) % 37, (s2 + (i as u32 + 1) * v) % 37)
    })
}

fn whole_check(key: &[u8; MASTER_KEY_LEN]) -> [u8; CHECK_LEN] {
    let d = blake3::derive_key(CHECK_CTX, key);
    let mut c = [0u8; CHECK_LEN];
    c.copy_from_slice(&d[..CHECK_LEN]);
    c
}

/// 40 bytes → 64 five-bit values, most significant bits first.
fn to_values(bytes: &[u8; MASTER_KEY_LEN + CHECK_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LINES * PER_LINE);
    let (mut acc, mut nbits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(((acc >> nbits) & 31) as u8);
        }
    }
    out
}

fn from_values(values: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MASTER_KEY_LEN + CHECK_LEN);
    let (mut acc, mut nbits) = (0u32, 0u32);
    for v in values {
        acc = ((acc << 5) | u32::from(*v)) & 0xffff;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push(((acc >> nbits) & 0xff) as u8);
        }
    }
    out
}

/// Formats the key as paper text (header and four lines, newline-terminated).
pub fn encode(key: &MasterKey) -> String {
    let k = key.expose_bytes();
    let mut bytes = [0u8; MASTER_KEY_LEN + CHECK_LEN];
    bytes[..MASTER_KEY_LEN].copy_from_slice(k);
    bytes[MASTER_KEY_LEN..].copy_from_slice(&whole_check(k));
    let values = to_values(&bytes);
    let mut out = format!("{HEADER}\n");
    for (n, line) in values.chunks(PER_LINE).enumerate() {
        out.push_str(&format!("{}:", n + 1));
        for group in line.chunks(GROUP) {
            out.push(' ');
            out.extend(group.iter().map(|v| char::from(ALPHABET[usize::from(*v)])));
        }
        let (s1, s2) = checks(line);
        out.push_str("  ");
        out.push(char::from(CHECK_ALPHABET[s1 as usize]));
        out.push(char::from(CHECK_ALPHABET[s2 as usize]));
        out.push('\n');
    }
    out
}

fn data_value(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|a| char::from(*a) == c)
        .map(|p| p as u8)
}

fn check_value(c: char) -> Option<u32> {
    let c = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    CHECK_ALPHABET
        .iter()
        .position(|a| char::from(*a) == c)
        .map(|p| p as u32)
}

fn inverse_mod37(x: u32) -> u32 {
    (1..37).find(|y| (x * y) % 37 == 1).unwrap_or(0)
}

/// Decodes one line's 18 characters (already stripped of spaces) into its 16 values.
fn decode_line(line: usize, chars: &[char]) -> Result<Vec<u8>, PaperError> {
    if chars.len() != PER_LINE + 2 {
        return Err(PaperError::LineLength {
            line,
            found: chars.len(),
        });
    }
    let mut values = Vec::with_capacity(PER_LINE);
    for (i, c) in chars[..PER_LINE].iter().enumerate() {
        values.push(data_value(*c).ok_or(PaperError::BadChar {
            line,
            group: i / GROUP + 1,
            pos: i % GROUP + 1,
            ch: *c,
        })?);
    }
    let mut want = [0u32; 2];
    for (w, c) in want.iter_mut().zip(&chars[PER_LINE..]) {
        *w = check_value(*c).ok_or(PaperError::BadCheckChar { line, ch: *c })?;
    }
    let (s1, s2) = checks(&values);
    if (s1, s2) == (want[0], want[1]) {
        return Ok(values);
    }
    let d1 = (s1 + 37 - want[0]) % 37;
    let d2 = (s2 + 37 - want[1]) % 37;
    if d1 != 0 && d2 != 0 {
        let pos = (d2 * inverse_mod37(d1)) % 37;
        if (1..=PER_LINE as u32).contains(&pos) {
            let i = pos as usize - 1;
            return Err(PaperError::Typo {
                line,
                group: i / GROUP + 1,
                pos: i % GROUP + 1,
            });
        }
    }
    Err(PaperError::LineCheck { line })
}

/// Reads a paper key back (see the module docs for what is tolerated).
pub fn decode(text: &str) -> Result<MasterKey, PaperError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    if lines.len() != LINES {
        return Err(PaperError::LineCount(lines.len()));
    }
    let mut values = Vec::with_capacity(LINES * PER_LINE);
    for (n, l) in lines.iter().enumerate() {
        let line = n + 1;
        let rest = l
            .split_once(':')
            .filter(|(num, _)| num.trim().parse::<usize>() == Ok(line))
            .map(|(_, rest)| rest)
            .ok_or(PaperError::LineNumber { line })?;
        let chars: Vec<char> = rest.chars().filter(|c| !c.is_whitespace()).collect();
        values.extend(decode_line(line, &chars)?);
    }
    let bytes = from_values(&values);
    let mut key = [0u8; MASTER_KEY_LEN];
    key.copy_from_slice(&bytes[..MASTER_KEY_LEN]);
    if bytes[MASTER_KEY_LEN..] != whole_check(&key) {
        return Err(PaperError::WholeKey);
    }
    Ok(MasterKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// (line, index within the line's 18 significant characters) of each significant character.
    fn positions(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (ln, l) in text.lines().enumerate().skip(1) {
            let colon = l.find(':').expect("colon");
            for (off, c) in l.char_indices().skip(colon + 1) {
                if !c.is_whitespace() {
                    out.push((ln, off));
                }
            }
        }
        out
    }

    fn replace_at(text: &str, line: usize, off: usize, c: char) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[line].replace_range(off..off + 1, &c.to_string());
        lines.join("\n")
    }

    #[test]
    fn round_trip_is_tolerant_of_case_and_spacing() {
        let key = MasterKey::from_bytes([0xA5; 32]);
        let text = encode(&key);
        assert!(text.starts_with(HEADER));
        assert_eq!(text.lines().count(), 5);
        let back = decode(&text).expect("decode");
        assert_eq!(back.expose_bytes(), key.expose_bytes());
        let sloppy = text.to_lowercase().replace(' ', "").replace('0', "o");
        assert_eq!(
            decode(&sloppy).expect("sloppy").expose_bytes(),
            key.expose_bytes()
        );
    }

    #[test]
    fn swapped_lines_fail_the_whole_key_check() {
        let text = encode(&MasterKey::from_bytes(std::array::from_fn(|i| {
            (i * 37) as u8
        })));
        let l: Vec<&str> = text.lines().collect();
        let swapped = format!(
            "{}\n1:{}\n2:{}\n{}\n{}\n",
            l[0],
            &l[2][2..],
            &l[1][2..],
            l[3],
            l[4]
        );
        assert_eq!(decode(&swapped).err(), Some(PaperError::WholeKey));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Every single-character substitution, at every position, by every other symbol, is
        /// detected; in a key character it is located to its line, group and character.
        #[test]
        fn every_single_substitution_is_detected_and_located(key in any::<[u8; 32]>()) {
            let key = MasterKey::from_bytes(key);
            let text = encode(&key);
            for (idx, (ln, off)) in positions(&text).into_iter().enumerate() {
                let within = idx % (PER_LINE + 2);
                let orig = text.lines().nth(ln).and_then(|l| l[off..].chars().next()).expect("char");
                let alphabet: &[u8] = if within < PER_LINE { ALPHABET } else { CHECK_ALPHABET };
                for &sym in alphabet {
                    let c = char::from(sym);
                    if c == orig {
                        continue;
                    }
                    let err = decode(&replace_at(&text, ln, off, c)).expect_err("typo accepted");
                    if within < PER_LINE {
                        prop_assert_eq!(err, PaperError::Typo {
                            line: ln,
                            group: within / GROUP + 1,
                            pos: within % GROUP + 1,
                        });
                    } else {
                        prop_assert_eq!(err, PaperError::LineCheck { line: ln });
                    }
                }
                let bad = decode(&replace_at(&text, ln, off, '!')).expect_err("bad char accepted");
                if within < PER_LINE {
                    let is_bad_char = matches!(bad, PaperError::BadChar { line, .. } if line == ln);
                    prop_assert!(is_bad_char);
                }
            }
        }
    }
}
