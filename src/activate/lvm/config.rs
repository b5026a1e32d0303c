//! LVM2's config-tree syntax (libdm/libdm-config.c), which the text metadata is written in:
//! `key = value`, `name { ... }`, values that are integers, floats, "strings" or [arrays],
//! `#` comments. Bounded for hostile input: nesting depth, string length and the number of
//! values are limited, integers that do not fit refuse instead of wrapping, and duplicate keys
//! (which LVM2 itself warns about and never writes) are refused.

use std::collections::HashMap;

/// Sections nest this deep at most; LVM2's metadata nests four levels.
pub const MAX_DEPTH: usize = 16;
/// The longest string; LVM2's names are at most 128 bytes, descriptions a command line.
pub const MAX_STRING: usize = 64 * 1024;
/// The most values and sections in one text.
pub const MAX_NODES: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(String),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Array(Vec<Scalar>),
    Section(Section),
}

/// A section's entries in text order, with an index by key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    pub entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    SectionB,
    SectionE,
    ArrayB,
    ArrayE,
    Comma,
    Eq,
    Eof,
    /// Anything else: a word, a number or a string (the parser decides by context).
    Word,
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
    nodes: usize,
    /// The current token: its kind and byte range.
    tok: Tok,
    tb: usize,
    te: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn err<T>(&self, what: impl std::fmt::Display) -> PResult<T> {
        Err(format!("line {}: {what}", self.line))
    }

    /// Skips white space and comments, then reads one token. `value` says whether a value
    /// (number, string) may come here, as LVM2's tokeniser decides after `=`, `[` and `,`.
    fn next(&mut self, value: bool) -> PResult<()> {
        let t = self.text;
        loop {
            while self.pos < t.len() && t[self.pos].is_ascii_whitespace() {
                if t[self.pos] == b'\n' {
                    self.line += 1;
                }
                self.pos += 1;
            }
            if self.pos < t.len() && t[self.pos] == b'#' {
                while self.pos < t.len() && t[self.pos] != b'\n' {
                    self.pos += 1;
                }
                continue;
            }
            break;
        }
        self.tb = self.pos;
        // A NUL ends the text, as the C string it is in LVM2.
        if self.pos >= t.len() || t[self.pos] == 0 {
            self.tok = Tok::Eof;
            self.te = self.pos;
            return Ok(());
        }
        let c = t[self.pos];
        let single = match c {
            b'{' => Some(Tok::SectionB),
            b'}' => Some(Tok::SectionE),
            b'[' => Some(Tok::ArrayB),
            b']' => Some(Tok::ArrayE),
            b',' => Some(Tok::Comma),
            b'=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(tok) = single {
            self.tok = tok;
            self.pos += 1;
        } else if c == b'"' || c == b'\'' {
            self.pos += 1;
            loop {
                if self.pos >= t.len() || t[self.pos] == 0 {
                    return self.err("unterminated string");
                }
                let b = t[self.pos];
                if b == c {
                    self.pos += 1;
                    break;
                }
                if b == b'\n' {
                    self.line += 1;
                }
                if c == b'"' && b == b'\\' && self.pos + 1 < t.len() && t[self.pos + 1] != 0 {
                    self.pos += 1;
                }
                self.pos += 1;
            }
            self.tok = Tok::Word;
        } else if value && (c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')) {
            self.pos += 1;
            let mut dot = c == b'.';
            while self.pos < t.len() {
                let b = t[self.pos];
                if b.is_ascii_digit() || (b == b'.' && !dot) {
                    dot |= b == b'.';
                    self.pos += 1;
                } else {
                    break;
                }
            }
            self.tok = Tok::Word;
        } else {
            while self.pos < t.len() && !ends_word(t[self.pos], value) {
                self.pos += 1;
            }
            self.tok = Tok::Word;
        }
        self.te = self.pos;
        if self.te - self.tb > MAX_STRING + 2 {
            return self.err(format!("a token longer than {MAX_STRING} bytes"));
        }
        Ok(())
    }

    fn count(&mut self) -> PResult<()> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return self.err(format!("more than {MAX_NODES} values"));
        }
        Ok(())
    }

    fn word(&self) -> &'a [u8] {
        &self.text[self.tb..self.te]
    }

    /// A key or section name: a bare word or a string.
    fn key(&self) -> PResult<String> {
        let w = self.word();
        let s = match w.first() {
            Some(b'"') => unescape(&w[1..w.len() - 1]),
            Some(b'\'') => w[1..w.len() - 1].to_vec(),
            _ => w.to_vec(),
        };
        if s.is_empty() {
            return self.err("empty name");
        }
        String::from_utf8(s).or_else(|_| self.err("a name that is not UTF-8"))
    }

    fn scalar(&self) -> PResult<Scalar> {
        let w = self.word();
        match w.first() {
            Some(b'"') => Ok(Scalar::Str(self.utf8(unescape(&w[1..w.len() - 1]))?)),
            Some(b'\'') => Ok(Scalar::Str(self.utf8(w[1..w.len() - 1].to_vec())?)),
            Some(c) if c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.') => {
                let s = std::str::from_utf8(w).unwrap_or_default();
                if s.contains('.') {
                    return Ok(Scalar::Float(s.to_string()));
                }
                let digits = s.trim_start_matches(['+', '-']);
                if digits.is_empty() {
                    return self.err(format!("malformed number {s:?}"));
                }
                // LVM2 reads with strtoll(base 0): a leading 0 would mean octal. LVM2 never
                // writes one; refuse rather than guess.
                if digits.len() > 1 && digits.starts_with('0') {
                    return self.err(format!("number {s:?} with a leading zero"));
                }
                match s.parse::<i64>() {
                    Ok(n) => Ok(Scalar::Int(n)),
                    Err(_) => self.err(format!("number {s} out of range")),
                }
            }
            _ => Ok(Scalar::Str(self.utf8(w.to_vec())?)),
        }
    }

    fn utf8(&self, b: Vec<u8>) -> PResult<String> {
        if b.len() > MAX_STRING {
            return self.err(format!("a string longer than {MAX_STRING} bytes"));
        }
        String::from_utf8(b).or_else(|_| self.err("a string that is not UTF-8"))
    }

    /// Entries until `}` (or the end, at depth 0). The current token is the first of them.
    fn section(&mut self, depth: usize) -> PResult<Section> {
        let mut sec = Section::default();
        loop {
            match self.tok {
                Tok::Eof if depth == 0 => return Ok(sec),
                Tok::Eof => return self.err("unexpected end of text: a '}' is missing"),
                Tok::SectionE if depth > 0 => {
                    self.next(false)?;
                    return Ok(sec);
                }
                Tok::Word => {}
                _ => return self.err("expected a name"),
            }
            let key = self.key()?;
            self.count()?;
            self.next(false)?;
            let value = match self.tok {
                Tok::SectionB => {
                    if depth + 1 > MAX_DEPTH {
                        return self.err(format!("sections nested deeper than {MAX_DEPTH}"));
                    }
                    self.next(false)?;
                    Value::Section(self.section(depth + 1)?)
                }
                Tok::Eq => {
                    self.next(true)?;
                    self.value()?
                }
                _ => return self.err(format!("expected '=' or '{{' after {key:?}")),
            };
            if sec.index.contains_key(&key) {
                return self.err(format!("duplicate key {key:?}"));
            }
            sec.index.insert(key.clone(), sec.entries.len());
            sec.entries.push((key, value));
        }
    }

    /// A value; the current token is its first. Leaves the token after it current.
    fn value(&mut self) -> PResult<Value> {
        match self.tok {
            Tok::ArrayB => {
                let mut items = Vec::new();
                self.next(true)?;
                loop {
                    match self.tok {
                        Tok::ArrayE => break,
                        Tok::Word => {
                            items.push(self.scalar()?);
                            self.count()?;
                            self.next(true)?;
                            if self.tok == Tok::Comma {
                                self.next(true)?;
                            }
                        }
                        Tok::Eof => return self.err("unexpected end of text: a ']' is missing"),
                        _ => return self.err("expected a value in an array"),
                    }
                }
                self.next(false)?;
                Ok(Value::Array(items))
            }
            Tok::Word => {
                let v = self.scalar()?;
                self.next(false)?;
                Ok(Value::Scalar(v))
            }
            _ => self.err("expected a value"),
        }
    }
}

/// Whether `b` ends a bare word: white space, a comment, `=`, a brace, and in a value also
/// `,` and `]` (LVM2's tokeniser lets a bare value run over those; nothing LVM2 writes has one).
fn ends_word(b: u8, value: bool) -> bool {
    b.is_ascii_whitespace()
        || matches!(b, 0 | b'#' | b'=' | b'{' | b'}')
        || (value && matches!(b, b',' | b']'))
}

/// LVM2's dm_unescape_double_quotes: a backslash keeps the next byte.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses a whole text into its root section. The error names the line.
pub fn parse(text: &[u8]) -> Result<Section, String> {
    let mut p = Parser {
        text,
        pos: 0,
        line: 1,
        nodes: 0,
        tok: Tok::Eof,
        tb: 0,
        te: 0,
    };
    p.next(false)?;
    p.section(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_lvm_writes() {
        let t = b"# comment\nvg {\nid = \"a-b\"\nseqno = 3\nstatus = [\"READ\", \"WRITE\"]\n\
                  x { y = -2\nz = [] f = 1.5 } }\ncontents = \"T\\\"x\"\n\0garbage";
        let root = parse(t).unwrap();
        let Some(Value::Section(vg)) = root.get("vg") else {
            panic!()
        };
        assert_eq!(vg.get("seqno"), Some(&Value::Scalar(Scalar::Int(3))));
        assert_eq!(
            vg.get("status"),
            Some(&Value::Array(vec![
                Scalar::Str("READ".into()),
                Scalar::Str("WRITE".into())
            ]))
        );
        let Some(Value::Section(x)) = vg.get("x") else {
            panic!()
        };
        assert_eq!(x.get("y"), Some(&Value::Scalar(Scalar::Int(-2))));
        assert_eq!(x.get("z"), Some(&Value::Array(vec![])));
        assert_eq!(
            x.get("f"),
            Some(&Value::Scalar(Scalar::Float("1.5".into())))
        );
        assert_eq!(
            root.get("contents"),
            Some(&Value::Scalar(Scalar::Str("T\"x".into())))
        );
    }

    #[test]
    fn refuses_hostile_texts() {
        let deep = "a {".repeat(MAX_DEPTH + 1) + &"}".repeat(MAX_DEPTH + 1);
        assert_eq!(
            parse(deep.as_bytes()).unwrap_err(),
            "line 1: sections nested deeper than 16"
        );
        assert_eq!(
            parse(b"a = 99999999999999999999").unwrap_err(),
            "line 1: number 99999999999999999999 out of range"
        );
        let big = format!("a = \"{}\"", "x".repeat(MAX_STRING + 1));
        assert_eq!(
            parse(big.as_bytes()).unwrap_err(),
            "line 1: a token longer than 65536 bytes"
        );
        assert_eq!(
            parse(b"a {\n b = 1").unwrap_err(),
            "line 2: unexpected end of text: a '}' is missing"
        );
        assert_eq!(
            parse(b"a = 1\na = 2").unwrap_err(),
            "line 2: duplicate key \"a\""
        );
        assert_eq!(
            parse(b"a = \"x").unwrap_err(),
            "line 1: unterminated string"
        );
        assert_eq!(
            parse(b"a b").unwrap_err(),
            "line 1: expected '=' or '{' after \"a\""
        );
    }
}
