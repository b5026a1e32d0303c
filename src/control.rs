//! What writes into `ctl/` do, independent of FUSE: assembling table text into a device as it
//! is written to `ctl/create/NAME`, and the one-line commands (`ctl/remove`).
//!
//! Every failure is recorded in the registry's error log (and so in `ctl/errors` and the daemon
//! log) and returned with its errno, so the `write(2)` that carried the bad line fails.

use std::path::PathBuf;
use std::sync::Arc;

use crate::device::Device;
use crate::error::{DmError, DmResult};
use crate::registry::Registry;
use crate::table::{MAX_LINE_BYTES, TableBuilder};

/// Splits written bytes into lines, bounding how much an unfinished line may hold.
#[derive(Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

fn to_text(bytes: Vec<u8>) -> DmResult<String> {
    String::from_utf8(bytes).map_err(|_| DmError::invalid("line is not valid UTF-8 text"))
}

impl LineBuffer {
    /// Adds written bytes; returns the lines they complete (without their newlines).
    pub fn push(&mut self, data: &[u8]) -> DmResult<Vec<String>> {
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.len() + nl > MAX_LINE_BYTES {
                self.partial.clear();
                return Err(DmError::invalid(format!("line longer than {MAX_LINE_BYTES} bytes")));
            }
            self.partial.extend_from_slice(&rest[..nl]);
            lines.push(to_text(std::mem::take(&mut self.partial))?);
            rest = &rest[nl + 1..];
        }
        if self.partial.len() + rest.len() > MAX_LINE_BYTES {
            self.partial.clear();
            return Err(DmError::invalid(format!("line longer than {MAX_LINE_BYTES} bytes")));
        }
        self.partial.extend_from_slice(rest);
        Ok(lines)
    }

    /// The unfinished last line, if any: written text need not end with a newline.
    pub fn take_rest(&mut self) -> DmResult<Option<String>> {
        if self.partial.is_empty() {
            return Ok(None);
        }
        to_text(std::mem::take(&mut self.partial)).map(Some)
    }
}

/// A table being written into `ctl/create/NAME`.
///
/// Each complete line is parsed and its target constructed as it arrives. The device goes live
/// at the first flush (`close`) after lines were written. A writer that keeps the file open
/// across closes of duplicated descriptors (`exec 3>ctl/create/x; echo ... >&3`) extends the
/// table it already made live, line by line, as its later closes arrive.
pub struct CreateSession {
    name: String,
    cwd: Option<PathBuf>,
    input: LineBuffer,
    builder: TableBuilder,
    /// Lines accepted since the table last went live.
    pending: bool,
    device: Option<Arc<Device>>,
    failed: Option<DmError>,
    wrote_anything: bool,
}

impl CreateSession {
    /// Starts a table for `name`, taking the name (EBUSY if taken, EINVAL if invalid).
    pub fn start(registry: &Registry, name: &str, cwd: Option<PathBuf>) -> DmResult<CreateSession> {
        registry.reserve(name).inspect_err(|e| registry.errors.record("create", name, e))?;
        Ok(CreateSession {
            name: name.to_string(),
            cwd,
            input: LineBuffer::default(),
            builder: TableBuilder::new(),
            pending: false,
            device: None,
            failed: None,
            wrote_anything: false,
        })
    }

    fn fail(&mut self, registry: &Registry, err: DmError) -> DmError {
        registry.errors.record("create", &self.name, &err);
        self.failed = Some(err.clone());
        err
    }

    fn add_line(&mut self, registry: &Registry, line: &str) -> DmResult<()> {
        let cwd = self.cwd.clone();
        let before = self.builder.lines();
        registry.with_resolver(cwd, |r| self.builder.add_line(line, r))?;
        self.pending |= self.builder.lines() > before;
        Ok(())
    }

    /// Takes written bytes; fails if any line they complete is bad.
    pub fn write(&mut self, registry: &Registry, data: &[u8]) -> DmResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.wrote_anything = true;
        let lines = match self.input.push(data) {
            Ok(lines) => lines,
            Err(e) => return Err(self.fail(registry, e)),
        };
        for line in lines {
            if let Err(e) = self.add_line(registry, &line) {
                return Err(self.fail(registry, e));
            }
        }
        Ok(())
    }

    /// Makes what has been written live: creates the device, or extends the table this session
    /// already made live.
    pub fn commit(&mut self, registry: &Registry) -> DmResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let rest = match self.input.take_rest() {
            Ok(rest) => rest,
            Err(e) => return Err(self.fail(registry, e)),
        };
        if let Some(line) = rest
            && let Err(e) = self.add_line(registry, &line)
        {
            return Err(self.fail(registry, e));
        }
        if !self.pending {
            return Ok(());
        }
        let table = match self.builder.table() {
            Ok(t) => t,
            Err(e) => return Err(self.fail(registry, e)),
        };
        match &self.device {
            Some(device) => device.set_table(table),
            None => match registry.create(&self.name, table) {
                Ok(device) => self.device = Some(device),
                Err(e) => return Err(self.fail(registry, e)),
            },
        }
        self.pending = false;
        Ok(())
    }

    /// The last close: commits what is left, or gives the name back if nothing went live.
    pub fn close(mut self, registry: &Registry) {
        if self.failed.is_none() && (self.pending || self.wrote_anything) {
            let _ = self.commit(registry);
        }
        if self.device.is_none() {
            registry.unreserve(&self.name);
            if self.failed.is_none() {
                let err = DmError::invalid("no table lines written: device not created");
                registry.errors.record("create", &self.name, &err);
            }
        }
    }
}

/// The one-line commands written into `ctl/` files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `ctl/remove`: NAME
    Remove,
}

impl Command {
    pub fn operation(self) -> &'static str {
        match self {
            Command::Remove => "remove",
        }
    }

    /// Runs one written line. Blank lines do nothing.
    pub fn run(self, registry: &Registry, line: &str) -> DmResult<()> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let result = match self {
            Command::Remove => registry.remove(line),
        };
        result.inspect_err(|e| registry.errors.record(self.operation(), line, e))
    }
}

/// Input to a command file: lines run as they complete.
pub struct CommandInput {
    command: Command,
    input: LineBuffer,
}

impl CommandInput {
    pub fn new(command: Command) -> CommandInput {
        CommandInput { command, input: LineBuffer::default() }
    }

    pub fn write(&mut self, registry: &Registry, data: &[u8]) -> DmResult<()> {
        let lines = self
            .input
            .push(data)
            .inspect_err(|e| registry.errors.record(self.command.operation(), "", e))?;
        lines.iter().try_for_each(|l| self.command.run(registry, l))
    }

    /// Runs an unfinished last line (`echo -n NAME > ctl/remove`).
    pub fn flush(&mut self, registry: &Registry) -> DmResult<()> {
        match self.input.take_rest() {
            Ok(Some(line)) => self.command.run(registry, &line),
            Ok(None) => Ok(()),
            Err(e) => {
                registry.errors.record(self.command.operation(), "", &e);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_splits_and_bounds() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"ab").unwrap(), Vec::<String>::new());
        assert_eq!(b.push(b"c\nd\n\ne").unwrap(), vec!["abc", "d", ""]);
        assert_eq!(b.take_rest().unwrap(), Some("e".to_string()));
        assert_eq!(b.take_rest().unwrap(), None);
        assert!(b.push(&vec![b'x'; MAX_LINE_BYTES + 1]).is_err());
        assert!(b.push(&[0xff, 0xfe, b'\n']).is_err());
    }
}
