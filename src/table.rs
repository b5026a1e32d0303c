//! Table text <-> typed lines: parsing as dmsetup and the kernel do it, validation of the layout
//! (contiguous from sector 0), and the canonical text `dmsetup table` prints.
//!
//! A `TableBuilder` takes the text a line at a time, so a bad line is refused by the very write
//! that carried it; `finish` checks the whole table once more before anything goes live.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::backing::{Backing, DeviceResolver};
use crate::device_key::DeviceKey;
use crate::device_link::DeviceLink;
use crate::error::{DmError, DmResult};
use crate::secret::{Zeroize, Zeroizing};
use crate::snapshot::Origins;
use crate::target::{self, Ctor, Target};
use crate::units::{Bytes, Sectors};

/// Longest accepted table line, in bytes (the kernel has no fixed limit; dmfs keeps memory
/// bounded against a runaway writer).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most lines one table may have.
pub const MAX_TABLE_LINES: usize = 1_000_000;
/// The longest device: one whose size in bytes still fits a file offset.
pub const MAX_DEVICE_SECTORS: Sectors = Sectors(i64::MAX as u64 / crate::units::SECTOR_SIZE);
/// The kernel's DM_MAX_TYPE_NAME is 16 bytes including the terminating NUL.
const MAX_TYPE_NAME: usize = 15;

/// One table line as written: `start length target_type args...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLine {
    pub start: Sectors,
    pub len: Sectors,
    pub target_type: String,
    pub args: Vec<String>,
}

/// A line's arguments may hold a crypt key: they are wiped when the line is let go.
impl Drop for TableLine {
    fn drop(&mut self) {
        self.args.zeroize();
    }
}

/// Parses a decimal sector count the way dmsetup reads start and length: digits, with an
/// optional '+' (dmsetup loads "+0" as 0).
fn parse_sectors(field: &str, what: &str) -> DmResult<Sectors> {
    let digits = field.strip_prefix('+').unwrap_or(field);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DmError::invalid(format!(
            "Invalid {what} '{field}': not a decimal sector count"
        )));
    }
    digits
        .parse::<u64>()
        .map(Sectors)
        .map_err(|_| DmError::invalid(format!("Invalid {what} '{field}': too large")))
}

/// Splits target arguments as the kernel's `dm_split_args` does: on white space, with a
/// backslash quoting the next character.
pub fn split_args(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    // One buffer with room for all of the text collects every word, so that growing it never
    // leaves a copy of a key behind in a freed buffer; each word is copied out at its exact size
    // and the buffer is wiped at the end.
    let mut current = Zeroizing::new(String::with_capacity(text.len()));
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                current.push(next);
            }
            in_word = true;
        } else if c.is_ascii_whitespace() {
            if in_word {
                args.push(current.as_str().to_owned());
                current.clear();
                in_word = false;
            }
        } else {
            current.push(c);
            in_word = true;
        }
    }
    if in_word {
        args.push(current.as_str().to_owned());
    }
    args
}

/// The first white-space separated word of `s` and what follows it.
fn next_word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if s.is_empty() {
        return None;
    }
    let end = s.find(|c: char| c.is_ascii_whitespace()).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

impl TableLine {
    /// Parses one line of table text. As dmsetup does, `#` starts a comment anywhere in a line,
    /// and a line with nothing else is not a table line: `Ok(None)`.
    pub fn parse(text: &str) -> DmResult<Option<TableLine>> {
        let uncommented = text.split('#').next().unwrap_or_default();
        let trimmed = uncommented.trim_matches(|c: char| c.is_ascii_whitespace());
        if trimmed.is_empty() {
            return Ok(None);
        }
        if let Some(c) = trimmed.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(DmError::invalid(format!(
                "Invalid character {:?} in table line",
                c
            )));
        }
        let words = next_word(trimmed)
            .and_then(|(start, rest)| next_word(rest).map(|(len, rest)| (start, len, rest)))
            .and_then(|(start, len, rest)| {
                next_word(rest).map(|(ty, rest)| (start, len, ty, rest))
            });
        let Some((start, len, ty, rest)) = words else {
            return Err(DmError::invalid(
                "Invalid format: a table line is 'start length target_type [args...]'",
            ));
        };
        let start = parse_sectors(start, "start sector")?;
        let len = parse_sectors(len, "length")?;
        if ty.len() > MAX_TYPE_NAME {
            return Err(DmError::invalid(format!("{ty}: unknown target type")));
        }
        Ok(Some(TableLine {
            start,
            len,
            target_type: ty.to_string(),
            args: split_args(rest),
        }))
    }
}

/// A target placed in a table: its extent and the constructed target. Targets are shared
/// (`Arc`) so a table can be extended or replaced without rebuilding the lines it keeps.
#[derive(Clone)]
pub struct Entry {
    pub start: Sectors,
    pub len: Sectors,
    pub target_type: &'static str,
    pub target: Arc<dyn Target>,
}

/// A complete, validated table: contiguous entries from sector 0.
#[derive(Clone)]
pub struct Table {
    entries: Vec<Entry>,
    /// Each entry's start sector, in order: the binary search for a request's entry probes
    /// 8 bytes per entry here rather than a 48-byte `Entry`, so a table of many lines keeps
    /// its search in a sixth of the cache.
    starts: Vec<u64>,
    len: Sectors,
    /// The device's logical block size in sectors: the largest any line gives it.
    block_sectors: u64,
}

impl Table {
    /// The logical block size in bytes this table gives its device (a block device's
    /// `blockdev --getss`): what a table stacked on the device must align to.
    pub fn logical_block_size(&self) -> u32 {
        (self.block_sectors * crate::units::SECTOR_SIZE) as u32
    }

    pub fn len(&self) -> Sectors {
        self.len
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry holding `sector`, if the table reaches it.
    pub fn entry_at(&self, sector: Sectors) -> Option<&Entry> {
        if sector >= self.len {
            return None;
        }
        self.entries.get(self.entry_index(sector))
    }

    /// Index of the entry holding `sector` (which must be inside the table).
    fn entry_index(&self, sector: Sectors) -> usize {
        self.starts.partition_point(|&s| s <= sector.0) - 1
    }

    /// Walks the entries covering `count` sectors from `start`, giving each the offset inside
    /// its target and the byte range of the caller's buffer it covers.
    fn for_each_piece(
        &self,
        start: Sectors,
        count: Sectors,
        mut f: impl FnMut(&Entry, Sectors, std::ops::Range<usize>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let end = start + count;
        if end > self.len {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut sector = start;
        let mut i = if count.0 == 0 {
            return Ok(());
        } else {
            self.entry_index(start)
        };
        while sector < end {
            let e = &self.entries[i];
            let piece_end = std::cmp::min(end, e.start + e.len);
            let from = (sector - start).bytes().0 as usize;
            let to = (piece_end - start).bytes().0 as usize;
            f(e, sector - e.start, from..to)?;
            sector = piece_end;
            i += 1;
        }
        Ok(())
    }

    /// Reads whole sectors; `buf.len()` must be a multiple of 512.
    pub fn read(&self, start: Sectors, buf: &mut [u8]) -> std::io::Result<()> {
        let count = Sectors(buf.len() as u64 / crate::units::SECTOR_SIZE);
        self.for_each_piece(start, count, |e, off, range| {
            e.target.read(off, &mut buf[range])
        })
    }

    /// Hands `len` bytes from byte `offset` to `send` where they lie, when they are inside one
    /// line whose target can say where (see `Target::read_in_place`); false otherwise.
    pub fn read_in_place(&self, offset: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        let Some(e) = self.entry_at(offset.sectors_floor()) else {
            return false;
        };
        let from = offset.0 - e.start.bytes().0;
        if from + len as u64 > e.len.bytes().0 {
            return false;
        }
        e.target.read_in_place(Bytes(from), len, send)
    }

    /// Writes whole sectors; `buf.len()` must be a multiple of 512. As in the kernel, where
    /// a write is split into one clone per target, every piece is written even when an
    /// earlier one fails; the first error is the answer.
    pub fn write(&self, start: Sectors, buf: &[u8]) -> std::io::Result<()> {
        let count = Sectors(buf.len() as u64 / crate::units::SECTOR_SIZE);
        let mut first_error = None;
        self.for_each_piece(start, count, |e, off, range| {
            if let Err(err) = e.target.write(off, &buf[range]) {
                first_error.get_or_insert(err);
            }
            Ok(())
        })?;
        first_error.map_or(Ok(()), Err)
    }

    /// Asks the targets whether the table may go live on the device `link` leads to (see
    /// `Target::preresume`).
    pub fn preresume_targets(&self, link: &DeviceLink) -> DmResult<()> {
        for e in &self.entries {
            e.target.preresume(link)?;
        }
        Ok(())
    }

    /// Tells the targets the table is live on the device `link` leads to (see
    /// `Target::resume`).
    pub fn resume_targets(&self, link: &DeviceLink) {
        for e in &self.entries {
            e.target.resume(self.len, link);
        }
    }

    /// Tells the targets their device is about to suspend.
    pub fn presuspend_targets(&self) {
        for e in &self.entries {
            e.target.presuspend();
        }
    }

    /// Tells the targets their device is suspended.
    pub fn suspend_targets(&self) {
        for e in &self.entries {
            e.target.suspend();
        }
    }

    pub fn flush(&self) -> std::io::Result<()> {
        for e in &self.entries {
            e.target.flush()?;
        }
        Ok(())
    }

    /// The table as `dmsetup table` prints it: `start length type args`, one line each. The
    /// text may hold a key, so it wipes itself when dropped.
    pub fn table_text(&self) -> Zeroizing<String> {
        self.lines_with(|t| t.table_args())
    }

    /// The status as `dmsetup status` prints it.
    pub fn status_text(&self) -> String {
        self.lines_with(|t| t.status()).to_string()
    }

    /// Whether any line's parameters show key material (`Target::holds_key`).
    pub fn holds_key(&self) -> bool {
        self.entries.iter().any(|e| e.target.holds_key())
    }

    fn lines_with(&self, params: impl Fn(&dyn Target) -> String) -> Zeroizing<String> {
        let lines: Vec<(String, Zeroizing<String>)> = self
            .entries
            .iter()
            .map(|e| {
                let head = format!("{} {} {}", e.start, e.len, e.target_type);
                (head, Zeroizing::new(params(&*e.target)))
            })
            .collect();
        // Sized once, so that no reallocation leaves a copy of a key behind unwiped.
        let len = lines.iter().map(|(h, p)| h.len() + p.len() + 2).sum();
        let mut out = Zeroizing::new(String::with_capacity(len));
        for (head, params) in &lines {
            // dmsetup prints "%llu %llu %s %s\n": a target with empty parameters keeps the
            // space before them.
            out.push_str(head);
            out.push(' ');
            out.push_str(params);
            out.push('\n');
        }
        out
    }

    /// Every backing device the table refers to, in table order, each once.
    pub fn devices(&self) -> Vec<Arc<Backing>> {
        let mut out: Vec<Arc<Backing>> = Vec::new();
        for e in &self.entries {
            for d in e.target.devices() {
                if !out.iter().any(|o| o.same_device(&d)) {
                    out.push(d);
                }
            }
        }
        out
    }
}

/// Builds a table line by line, constructing each target as its line arrives.
pub struct TableBuilder {
    entries: Vec<Entry>,
    next_start: Sectors,
    line_no: usize,
    /// The devices the table's lines have opened, so far: see `Sharing`.
    opened: HashMap<(bool, DeviceKey), Arc<Backing>>,
}

/// Hands every line of one table the same open device for the same device, as the kernel's
/// `dm_get_device` keeps one open per device per table. Each reference is still resolved (and
/// its writer's rights checked) through the real resolver; a duplicate is then let go for the
/// one already open. Without this a table of N lines over one file held N descriptors, and a
/// request paid for a cold kernel `struct file` of its own (`microbench_table_lines` shows
/// the difference between 10 and 10,000 lines).
struct Sharing<'a> {
    inner: &'a dyn DeviceResolver,
    opened: RefCell<HashMap<(bool, DeviceKey), Arc<Backing>>>,
}

impl Sharing<'_> {
    fn share(&self, for_writes: bool, dev: Arc<Backing>) -> Arc<Backing> {
        self.opened
            .borrow_mut()
            .entry((for_writes, dev.key()))
            .or_insert(dev)
            .clone()
    }
}

impl DeviceResolver for Sharing<'_> {
    fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
        let dev = self.inner.open(reference)?;
        Ok(self.share(false, dev))
    }

    fn open_for_target_writes(&self, reference: &str) -> DmResult<Arc<Backing>> {
        let dev = self.inner.open_for_target_writes(reference)?;
        Ok(self.share(true, dev))
    }
}

impl Default for TableBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TableBuilder {
    pub fn new() -> TableBuilder {
        TableBuilder {
            entries: Vec::new(),
            next_start: Sectors(0),
            line_no: 0,
            opened: HashMap::new(),
        }
    }

    /// Number of table lines accepted so far.
    pub fn lines(&self) -> usize {
        self.entries.len()
    }

    /// The devices the most recently accepted line maps onto.
    pub fn last_line_devices(&self) -> Vec<Arc<Backing>> {
        self.entries
            .last()
            .map(|e| e.target.devices())
            .unwrap_or_default()
    }

    /// Parses, validates and constructs one line of text, for the mount whose snapshots are
    /// `origins`. The error names the line number.
    pub fn add_line(
        &mut self,
        text: &str,
        resolver: &dyn DeviceResolver,
        origins: &Arc<Origins>,
    ) -> DmResult<()> {
        self.line_no += 1;
        let line_no = self.line_no;
        self.add_parsed(text, resolver, origins)
            .map_err(|e| e.context(format!("line {line_no}")))
    }

    fn add_parsed(
        &mut self,
        text: &str,
        resolver: &dyn DeviceResolver,
        origins: &Arc<Origins>,
    ) -> DmResult<()> {
        if text.len() > MAX_LINE_BYTES {
            return Err(DmError::invalid(format!(
                "table line longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        let Some(line) = TableLine::parse(text)? else {
            return Ok(());
        };
        let Some(ty) = target::find_type(&line.target_type) else {
            return Err(DmError::invalid(format!(
                "{}: unknown target type",
                line.target_type
            )));
        };
        if self.entries.len() >= MAX_TABLE_LINES {
            return Err(DmError::invalid(format!(
                "{}: too many targets (limit {MAX_TABLE_LINES})",
                ty.name
            )));
        }
        if line.len.0 == 0 {
            return Err(DmError::invalid(format!("{}: zero-length target", ty.name)));
        }
        // The kernel's adjoin(): the first line starts at 0, each next one where the last ended.
        if line.start != self.next_start {
            return Err(DmError::invalid(format!("{}: Gap in table", ty.name)));
        }
        // dev/NAME is a file: its size in bytes must fit a file offset (i64).
        let end = line
            .start
            .checked_add(line.len)
            .filter(|e| e.0 <= MAX_DEVICE_SECTORS.0);
        let Some(end) = end else {
            // The kernel's limit and words: the end must stay below 2^54 sectors.
            return Err(DmError::invalid(format!(
                "too large device (longer than {MAX_DEVICE_SECTORS} sectors)"
            )));
        };
        let sharing = Sharing {
            inner: resolver,
            opened: RefCell::new(std::mem::take(&mut self.opened)),
        };
        let ctor = Ctor {
            start: line.start,
            len: line.len,
            resolver: &sharing,
            origins,
        };
        let target = (ty.construct)(&ctor, &line.args).map_err(|e| e.context(ty.name));
        self.opened = sharing.opened.into_inner();
        if target.is_err() {
            // Devices only a refused line opened are let go at once, as before.
            self.opened.retain(|_, dev| Arc::strong_count(dev) > 1);
        }
        let target = target?;
        self.entries.push(Entry {
            start: line.start,
            len: line.len,
            target_type: ty.name,
            target: Arc::from(target),
        });
        self.next_start = end;
        Ok(())
    }

    /// The table so far, checked as a whole: at least one line, contiguous from 0.
    pub fn table(&self) -> DmResult<Table> {
        if self.entries.is_empty() {
            return Err(DmError::invalid("empty table: no target lines"));
        }
        let mut expect = Sectors(0);
        for e in &self.entries {
            if e.start != expect {
                return Err(DmError::invalid(format!("{}: Gap in table", e.target_type)));
            }
            expect = e.start + e.len;
        }
        // Each line's block sizes, worked out once: what its devices give it, and what it gives
        // the device (the kernel's queue limits after `iterate_devices`, then `io_hints`).
        let mut blocks = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let stacked = e.target.device_block_sectors();
            let block = e.target.logical_block_sectors(stacked);
            for area in e.target.areas(e.len) {
                target::check_area_alignment(&area, block)?;
            }
            blocks.push(LineBlocks { stacked, block });
        }
        let block_sectors = check_block_alignment(&self.entries, &blocks)?;
        Ok(Table {
            entries: self.entries.clone(),
            starts: self.entries.iter().map(|e| e.start.0).collect(),
            len: expect,
            block_sectors,
        })
    }
}

/// A line's logical block sizes in sectors: the largest of its devices', and the one it gives
/// the device.
struct LineBlocks {
    stacked: u64,
    block: u64,
}

/// The kernel's `validate_hardware_logical_block_alignment`: the device's logical block size
/// is the largest any line gives it (returned, in sectors), and every stretch of lines must
/// fill whole blocks, with no block split where a line over a device of a larger block size
/// begins. Its words, as the oracle printed them, give the line where the check stopped as
/// the kernel's index counted from 0, or, when it ran through, the number of lines and the
/// last line's extent. `blocks` holds each entry's sizes.
fn check_block_alignment(entries: &[Entry], blocks: &[LineBlocks]) -> DmResult<u64> {
    let block = blocks.iter().map(|b| b.block).max().unwrap_or(1);
    if block <= 1 {
        return Ok(block);
    }
    let mut next_start = 0u64;
    let mut remaining = 0u64;
    let mut stopped = None;
    for (i, (e, b)) in entries.iter().zip(blocks).enumerate() {
        if remaining < e.len.0 && remaining & (b.stacked - 1) != 0 {
            stopped = Some(i);
            break;
        }
        next_start = (next_start + e.len.0) & (block - 1);
        remaining = if next_start == 0 {
            0
        } else {
            block - next_start
        };
    }
    if remaining == 0 {
        return Ok(block);
    }
    let (number, e) = match stopped {
        Some(i) => (i, &entries[i]),
        None => (entries.len(), &entries[entries.len() - 1]),
    };
    Err(DmError::invalid(format!(
        "table line {number} (start sect {} len {}) not aligned to h/w logical block size {}",
        e.start,
        e.len,
        block * 512
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_comments_and_blanks() {
        assert_eq!(TableLine::parse("").unwrap(), None);
        assert_eq!(TableLine::parse("   \t").unwrap(), None);
        assert_eq!(TableLine::parse("  # 0 8 zero").unwrap(), None);
        let l = TableLine::parse("+0 8 zero # trailing comment")
            .unwrap()
            .unwrap();
        assert_eq!((l.start, l.len, l.args.len()), (Sectors(0), Sectors(8), 0));
    }

    #[test]
    fn parse_fields() {
        let l = TableLine::parse(" 0  8\tlinear  /a\\ b   16 ")
            .unwrap()
            .unwrap();
        assert_eq!(l.start, Sectors(0));
        assert_eq!(l.len, Sectors(8));
        assert_eq!(l.target_type, "linear");
        assert_eq!(l.args, vec!["/a b".to_string(), "16".to_string()]);
    }

    #[test]
    fn parse_rejects_bad_numbers() {
        for bad in [
            "x 8 zero",
            "0 -8 zero",
            "0 0x10 zero",
            "0 8",
            "0",
            "0 99999999999999999999 zero",
            "0 + zero",
        ] {
            let e = TableLine::parse(bad).unwrap_err();
            assert_eq!(e.errno, libc::EINVAL, "{bad}");
        }
    }

    /// The lines limit, with the errno and words the write gets (too slow to hit through a
    /// mount in a debug build: a million lines take several seconds there).
    #[test]
    fn a_table_takes_at_most_max_table_lines() {
        struct NoDevices;
        impl DeviceResolver for NoDevices {
            fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
                Err(DmError::not_found(reference.to_string()))
            }
        }
        let origins = Arc::default();
        let mut b = TableBuilder::new();
        for i in 0..MAX_TABLE_LINES {
            b.add_line(&format!("{i} 1 zero"), &NoDevices, &origins)
                .unwrap();
        }
        let e = b
            .add_line(&format!("{MAX_TABLE_LINES} 1 zero"), &NoDevices, &origins)
            .unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert_eq!(
            e.reason,
            "line 1000001: zero: too many targets (limit 1000000)"
        );
        assert_eq!(b.lines(), MAX_TABLE_LINES);
        // Comments and blank lines do not count.
        b.add_line("# a comment", &NoDevices, &origins).unwrap();
    }

    /// Lines naming the same file share one open file (the kernel's dm_get_device); a
    /// refused line keeps nothing open.
    #[test]
    fn lines_share_their_devices() {
        struct Files(Vec<std::path::PathBuf>);
        impl DeviceResolver for Files {
            fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
                let i = (reference.as_bytes()[0] - b'A') as usize;
                Backing::open_path(&self.0[i], true).map(Arc::new)
            }
        }
        let files = Files(
            ["A", "B"]
                .iter()
                .map(|n| {
                    let p =
                        std::env::temp_dir().join(format!("dmfs-share-{n}-{}", std::process::id()));
                    std::fs::File::create(&p)
                        .unwrap()
                        .set_len(64 * 512)
                        .unwrap();
                    p
                })
                .collect(),
        );
        let origins = Arc::default();
        let mut b = TableBuilder::new();
        b.add_line("0 8 linear A 0", &files, &origins).unwrap();
        b.add_line("8 8 linear A 8", &files, &origins).unwrap();
        b.add_line("16 16 striped 2 8 A 16 A 32", &files, &origins)
            .unwrap();
        assert_eq!(b.opened.len(), 1);
        // B opens, then the line is refused (past B's end): B is let go.
        b.add_line("32 8 linear B 60", &files, &origins)
            .unwrap_err();
        assert_eq!(b.opened.len(), 1);
        let t = b.table().unwrap();
        let devs: Vec<Arc<Backing>> = t
            .entries()
            .iter()
            .flat_map(|e| e.target.devices())
            .collect();
        assert_eq!(devs.len(), 4);
        assert!(devs.iter().all(|d| Arc::ptr_eq(d, &devs[0])));
        assert_eq!(t.devices().len(), 1);
        for p in &files.0 {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn split_args_escapes() {
        assert_eq!(split_args("a  b\\ c \\\\d"), vec!["a", "b c", "\\d"]);
        assert!(split_args("   ").is_empty());
    }
}
