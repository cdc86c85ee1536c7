//! Reads a `mysqldump`/`mariadb-dump` stream as it passes to the chunker and extracts what the
//! backup validates: the tables created, the rows of each table's INSERT statements, the binary
//! log coordinates, and whether the completion trailer (`-- Dump completed`) ends the stream.
//!
//! Memory is bounded: only the first [`PREFIX_LEN`] bytes of a line are kept, whatever the line
//! or dump length. Rows are counted by a small state machine over `INSERT INTO `t` VALUES`
//! statements (one line, or spread over lines as MariaDB ≥ 10.11 writes them): a row is a `(`
//! at nesting depth 0; quotes (`'…'` and `"…"`, with `\` escapes and doubled quotes) hide
//! parentheses, commas and semicolons; hex blobs (`0x…`) and `NULL` need nothing special; `;`
//! at depth 0 ends the statement. Text between `DELIMITER ;;` and `DELIMITER ;` (triggers,
//! routines, events) is never taken for data, so a procedure body holding an INSERT statement
//! does not count rows. Not supported: `--complete-insert` (a column list before VALUES) and
//! `INSERT IGNORE`/`REPLACE` (never produced by the options Lifeboat passes).

use std::collections::BTreeMap;
use std::io::{self, Read};

/// Bytes of each line kept for recognising it.
pub const PREFIX_LEN: usize = 512;

/// What the scanner found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Tables with a `CREATE TABLE` statement, in order.
    pub tables: Vec<String>,
    /// Rows per table counted from INSERT statements.
    pub rows: BTreeMap<String, u64>,
    /// The last non-blank line was `-- Dump completed…`.
    pub trailer: bool,
    pub binlog_file: String,
    pub binlog_position: u64,
    /// Accounts created (`CREATE USER … `u`@`h``), for a users dump.
    pub users: Vec<String>,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Collecting a line's prefix.
    Line,
    /// Past the kept prefix of a line that is not an INSERT: wait for the newline.
    SkipLine,
    /// Inside the VALUES of an INSERT statement.
    Values,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quote {
    None,
    In(u8),
    /// Just after a backslash inside a quoted string.
    Escape(u8),
    /// Just after a closing-looking quote: a doubled quote continues the string.
    MaybeEnd(u8),
}

/// The streaming scanner.
#[derive(Debug)]
pub struct Scanner {
    mode: Mode,
    line: Vec<u8>,
    table: String,
    depth: u32,
    quote: Quote,
    in_delimiter_block: bool,
    summary: ScanSummary,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            mode: Mode::Line,
            line: Vec::with_capacity(PREFIX_LEN),
            table: String::new(),
            depth: 0,
            quote: Quote::None,
            in_delimiter_block: false,
            summary: ScanSummary::default(),
        }
    }
}

impl Scanner {
    pub fn feed(&mut self, data: &[u8]) {
        self.summary.bytes += data.len() as u64;
        for &b in data {
            match self.mode {
                Mode::Line => self.line_byte(b),
                Mode::SkipLine => {
                    if b == b'\n' {
                        self.mode = Mode::Line;
                    }
                }
                Mode::Values => self.value_byte(b),
            }
        }
    }

    /// Ends the stream and returns the summary.
    pub fn finish(mut self) -> ScanSummary {
        if self.mode == Mode::Line && !self.line.is_empty() {
            self.end_line();
        }
        self.summary
    }

    fn line_byte(&mut self, b: u8) {
        if b == b'\n' {
            self.end_line();
            return;
        }
        if self.line.len() < PREFIX_LEN {
            self.line.push(b);
            if b == b'S'
                && !self.in_delimiter_block
                && let Some(t) = insert_table(&self.line)
            {
                self.table = t;
                self.summary.trailer = false;
                self.summary.rows.entry(self.table.clone()).or_insert(0);
                self.mode = Mode::Values;
                self.depth = 0;
                self.quote = Quote::None;
                self.line.clear();
            }
        } else {
            self.classify_line();
            self.line.clear();
            self.mode = Mode::SkipLine;
        }
    }

    fn end_line(&mut self) {
        self.classify_line();
        self.line.clear();
        self.mode = Mode::Line;
    }

    fn classify_line(&mut self) {
        let l = self.line.as_slice();
        if l.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let dump_completed = l.starts_with(b"-- Dump completed");
        self.summary.trailer = dump_completed;
        if dump_completed {
            return;
        }
        if l.starts_with(b"DELIMITER ;;") {
            self.in_delimiter_block = true;
        } else if l.starts_with(b"DELIMITER ;") {
            self.in_delimiter_block = false;
        } else if self.in_delimiter_block {
        } else if let Some(rest) = l.strip_prefix(b"CREATE TABLE `") {
            if let Some((name, _)) = backquoted(rest) {
                self.summary.tables.push(name);
            }
        } else if let Some(rest) = l
            .strip_prefix(b"-- CHANGE MASTER TO ")
            .or_else(|| l.strip_prefix(b"-- CHANGE REPLICATION SOURCE TO "))
        {
            let text = String::from_utf8_lossy(rest);
            for part in text.trim_end_matches(';').split(',') {
                let Some((k, v)) = part.split_once('=') else {
                    continue;
                };
                match k.trim() {
                    "MASTER_LOG_FILE" | "SOURCE_LOG_FILE" => {
                        self.summary.binlog_file = v.trim().trim_matches('\'').to_owned()
                    }
                    "MASTER_LOG_POS" | "SOURCE_LOG_POS" => {
                        self.summary.binlog_position = v.trim().parse().unwrap_or(0)
                    }
                    _ => {}
                }
            }
        } else if let Some(rest) = l
            .strip_prefix(b"CREATE USER IF NOT EXISTS `")
            .or_else(|| l.strip_prefix(b"CREATE USER `"))
            && let Some((user, after)) = backquoted(rest)
            && let Some(h) = after.strip_prefix(b"@`")
            && let Some((host, _)) = backquoted(h)
        {
            self.summary.users.push(format!("'{user}'@'{host}'"));
        }
    }

    fn value_byte(&mut self, b: u8) {
        match self.quote {
            Quote::In(q) => {
                if b == b'\\' {
                    self.quote = Quote::Escape(q);
                } else if b == q {
                    self.quote = Quote::MaybeEnd(q);
                }
                return;
            }
            Quote::Escape(q) => {
                self.quote = Quote::In(q);
                return;
            }
            Quote::MaybeEnd(q) => {
                if b == q {
                    self.quote = Quote::In(q);
                    return;
                }
                self.quote = Quote::None;
            }
            Quote::None => {}
        }
        match b {
            b'\'' | b'"' if self.depth > 0 => self.quote = Quote::In(b),
            b'(' => {
                if self.depth == 0
                    && let Some(n) = self.summary.rows.get_mut(&self.table)
                {
                    *n += 1;
                }
                self.depth += 1;
            }
            b')' => self.depth = self.depth.saturating_sub(1),
            b';' if self.depth == 0 => self.mode = Mode::SkipLine,
            _ => {}
        }
    }
}

/// `INSERT INTO `name` VALUES` at the start of `line` (ending exactly there) → the name.
fn insert_table(line: &[u8]) -> Option<String> {
    let rest = line.strip_prefix(b"INSERT INTO `")?;
    let (name, after) = backquoted(rest)?;
    (after == b" VALUES").then_some(name)
}

/// Reads a backquoted identifier body (after the opening backquote), `` `` `` being an escaped
/// backquote. Returns the name and what follows the closing backquote.
fn backquoted(s: &[u8]) -> Option<(String, &[u8])> {
    let mut name = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'`' {
            if s.get(i + 1) == Some(&b'`') {
                name.push(b'`');
                i += 2;
                continue;
            }
            return Some((String::from_utf8_lossy(&name).into_owned(), &s[i + 1..]));
        }
        name.push(s[i]);
        i += 1;
    }
    None
}

/// A reader that shows every byte it passes to a [`Scanner`].
pub struct ScanReader<R> {
    pub inner: R,
    pub scanner: Scanner,
}

impl<R: Read> Read for ScanReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scanner.feed(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(data: &[u8], step: usize) -> ScanSummary {
        let mut s = Scanner::default();
        for piece in data.chunks(step.max(1)) {
            s.feed(piece);
        }
        s.finish()
    }

    const DUMP: &str = "-- MariaDB dump 10.19\n\
/*!40101 SET NAMES utf8mb4 */;\n\
-- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000002', MASTER_LOG_POS=1234;\n\
DROP TABLE IF EXISTS `t``1`;\n\
CREATE TABLE `t``1` (\n  `id` int(11) NOT NULL\n) ENGINE=InnoDB;\n\
INSERT INTO `t``1` VALUES\n(1,'a (b), c; d'),\n(2,'it\\'s \\\\'),\n(3,'x''y'),\n(4,NULL),\n(5,0xDEADBEEF),\n(6,'\\n(7,8);');\n\
INSERT INTO `t``1` VALUES (7,'é\"'),(8,\"q(\");\n\
CREATE TABLE `empty` (\n  `id` int\n);\n\
DELIMITER ;;\n\
CREATE PROCEDURE p() BEGIN\nINSERT INTO `t``1` VALUES (99,'x');\nEND ;;\n\
DELIMITER ;\n\
CREATE USER IF NOT EXISTS `bob`@`localhost` IDENTIFIED BY PASSWORD '*X';\n\
\n\
-- Dump completed on 2026-11-26  7:29:09\n";

    #[test]
    fn counts_rows_tables_and_trailer_whatever_the_read_sizes() {
        for step in [1, 2, 3, 7, 64, 4096] {
            let s = scan_in_pieces(DUMP.as_bytes(), step);
            assert_eq!(s.tables, vec!["t`1".to_string(), "empty".to_string()]);
            assert_eq!(s.rows.get("t`1"), Some(&8), "step {step}");
            assert!(!s.rows.contains_key("empty"));
            assert!(s.trailer);
            assert_eq!(
                (s.binlog_file.as_str(), s.binlog_position),
                ("binlog.000002", 1234)
            );
            assert_eq!(s.users, vec!["'bob'@'localhost'".to_string()]);
            assert_eq!(s.bytes, DUMP.len() as u64);
        }
    }

    #[test]
    fn truncated_or_empty_dumps_have_no_trailer() {
        let cut = &DUMP[..DUMP.len() - 45];
        assert!(!scan_in_pieces(cut.as_bytes(), 10).trailer);
        let s = scan_in_pieces(b"", 10);
        assert!(!s.trailer && s.tables.is_empty());
        let after = format!("{DUMP}INSERT INTO `t` VALUES (1);\n");
        assert!(!scan_in_pieces(after.as_bytes(), 10).trailer);
    }

    #[test]
    fn long_lines_do_not_grow_memory_or_confuse_the_scanner() {
        let long = "x".repeat(10 * PREFIX_LEN);
        let rows: String = (0..1000)
            .map(|i| format!("({i},'{long}')"))
            .collect::<Vec<_>>()
            .join(",");
        let dump = format!(
            "-- {long}\nCREATE TABLE `big` (\n);\nINSERT INTO `big` VALUES {rows};\n-- Dump completed\n"
        );
        let s = scan_in_pieces(dump.as_bytes(), 999);
        assert_eq!(s.rows.get("big"), Some(&1000));
        assert!(s.trailer);
    }
}
