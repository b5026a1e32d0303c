//! What writes into `ctl/` do, independent of FUSE: assembling table text into a device as it
//! is written to `ctl/create/NAME` or `ctl/reload/NAME`, and the one-line commands
//! (`ctl/remove`, `ctl/suspend`, `ctl/resume`, `ctl/rename`, `ctl/message`).
//!
//! Every failure is recorded in the registry's error log (and so in `ctl/errors` and the daemon
//! log) and returned with its errno, so the `write(2)` that carried the bad line fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::access::Caller;
use crate::device::Device;
use crate::error::{DmError, DmResult};
use crate::registry::Registry;
use crate::secret::{Secret, Zeroize, Zeroizing};
use crate::table::{MAX_LINE_BYTES, TableBuilder};

/// Splits written bytes into lines, bounding how much an unfinished line may hold. Lines may
/// hold a crypt key: every buffer is wiped when let go, and growing one never leaves a copy.
#[derive(Default)]
pub struct LineBuffer {
    partial: Secret,
}

fn to_text(bytes: Secret) -> DmResult<Zeroizing<String>> {
    crate::secret::text(bytes).ok_or_else(|| DmError::invalid("line is not valid UTF-8 text"))
}

impl LineBuffer {
    /// Adds written bytes; returns the lines they complete (without their newlines).
    pub fn push(&mut self, data: &[u8]) -> DmResult<Vec<Zeroizing<String>>> {
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.len() + nl > MAX_LINE_BYTES {
                self.partial.zeroize();
                return Err(DmError::invalid(format!(
                    "line longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            crate::secret::extend(&mut self.partial, &rest[..nl]);
            lines.push(to_text(std::mem::take(&mut self.partial))?);
            rest = &rest[nl + 1..];
        }
        if self.partial.len() + rest.len() > MAX_LINE_BYTES {
            self.partial.zeroize();
            return Err(DmError::invalid(format!(
                "line longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        crate::secret::extend(&mut self.partial, rest);
        Ok(lines)
    }

    /// Whether an unfinished last line is waiting.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The unfinished last line, if any: written text need not end with a newline.
    pub fn take_rest(&mut self) -> DmResult<Option<Zeroizing<String>>> {
        if self.partial.is_empty() {
            return Ok(None);
        }
        to_text(std::mem::take(&mut self.partial)).map(Some)
    }
}

/// The process behind a write or a flush of a `ctl/` file: the kernel's lock owner (its open
/// files table, shared by its threads) where the request carries one, else its pid.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    pub pid: u32,
    pub lock_owner: Option<u64>,
}

impl Writer {
    fn same_process(self, other: Writer) -> bool {
        match (self.lock_owner, other.lock_owner) {
            (Some(a), Some(b)) => a == b,
            _ => self.pid == other.pid,
        }
    }
}

/// What a table session does with its table.
pub enum TableTarget {
    /// `ctl/create/NAME`: a new device; `device` is set once it is live.
    Create { device: Option<Arc<Device>> },
    /// `ctl/reload/NAME`: the inactive table of an existing device.
    Reload { device: Arc<Device> },
}

/// A table being written into `ctl/create/NAME` or `ctl/reload/NAME`.
///
/// Each complete line is parsed and its target constructed as it arrives. The table takes
/// effect at the first flush (`close`) after lines were written: a created device goes live, a
/// reloaded table becomes the inactive one. A writer that keeps the file open across closes of
/// duplicated descriptors (`exec 3>ctl/create/x; echo ... >&3`) extends the table it already
/// committed as its later closes arrive.
///
/// An unfinished last line (`printf '0 8 zero' > ...`) is complete when the process that wrote
/// it closes its descriptor: its flush takes the line, so any error in it fails that close(2).
/// A flush from a process that did not write it (a child closing its inherited copy while its
/// parent is mid-line) leaves it waiting. Nothing is ever committed at the release that
/// follows the last close, where no error could reach anyone.
pub struct TableSession {
    name: String,
    target: TableTarget,
    cwd: Option<PathBuf>,
    /// Who writes the table: what it may name, and who will own the device.
    caller: Caller,
    input: LineBuffer,
    /// Who wrote the unfinished last line: only their close completes it.
    partial_by: Option<Writer>,
    builder: TableBuilder,
    /// Lines accepted since the table last went live.
    pending: bool,
    failed: Option<DmError>,
    read_only: bool,
    /// A create that has not gone live holds its name reserved until it fails or closes.
    holds_name: bool,
}

impl TableSession {
    fn new(
        name: &str,
        target: TableTarget,
        cwd: Option<PathBuf>,
        caller: Caller,
        read_only: bool,
    ) -> TableSession {
        let holds_name = matches!(target, TableTarget::Create { device: None });
        TableSession {
            name: name.to_string(),
            target,
            cwd,
            caller,
            input: LineBuffer::default(),
            partial_by: None,
            builder: TableBuilder::new(),
            pending: false,
            failed: None,
            read_only,
            holds_name,
        }
    }

    /// Starts a new device's table, taking the name (EBUSY if taken, EINVAL if invalid). A
    /// read-only device opens its backing devices read-only and refuses writes.
    pub fn create(
        registry: &Registry,
        name: &str,
        cwd: Option<PathBuf>,
        caller: Caller,
        read_only: bool,
    ) -> DmResult<TableSession> {
        registry
            .reserve(name)
            .inspect_err(|e| registry.errors.record("create", name, e))?;
        Ok(TableSession::new(
            name,
            TableTarget::Create { device: None },
            cwd,
            caller,
            read_only,
        ))
    }

    /// Starts a table to load into an existing device's inactive slot (ENOENT if none, EPERM
    /// if `caller` may not manage it).
    pub fn reload(
        registry: &Registry,
        name: &str,
        cwd: Option<PathBuf>,
        caller: Caller,
    ) -> DmResult<TableSession> {
        let device = registry
            .find(name)
            .and_then(|d| registry.check_manager(&caller, &d).map(|()| d))
            .inspect_err(|e| registry.errors.record("reload", name, e))?;
        let read_only = device.is_read_only();
        Ok(TableSession::new(
            name,
            TableTarget::Reload { device },
            cwd,
            caller,
            read_only,
        ))
    }

    fn operation(&self) -> &'static str {
        match self.target {
            TableTarget::Create { .. } => "create",
            TableTarget::Reload { .. } => "reload",
        }
    }

    /// The device whose table this session replaces or extends, once there is one: others
    /// may already be stacked on it.
    fn live_device(&self) -> Option<&Device> {
        match &self.target {
            TableTarget::Reload { device } => Some(device),
            TableTarget::Create { device } => device.as_deref(),
        }
    }

    fn fail(&mut self, registry: &Registry, err: DmError) -> DmError {
        registry.errors.record(self.operation(), &self.name, &err);
        self.failed = Some(err.clone());
        // The write that failed has its answer: the name is free again at once, not only when
        // the kernel gets round to releasing the file (a retry right after must not see EBUSY).
        self.release_name(registry);
        err
    }

    fn release_name(&mut self, registry: &Registry) {
        if std::mem::take(&mut self.holds_name) {
            registry.unreserve(&self.name);
        }
    }

    fn add_line(&mut self, registry: &Registry, line: &str) -> DmResult<()> {
        let cwd = self.cwd.clone();
        let before = self.builder.lines();
        registry.with_resolver(cwd, !self.read_only, &self.caller, |r| {
            self.builder.add_line(line, r, registry.origins())
        })?;
        let references = self.builder.last_line_devices();
        let live = self.live_device();
        if let Some(device) = live {
            crate::registry::check_no_loop(&self.name, device, &references)?;
        }
        registry.check_depth(&self.name, live, &references)?;
        self.pending |= self.builder.lines() > before;
        Ok(())
    }

    /// Takes bytes written by `writer`; fails if any line they complete is bad.
    pub fn write(&mut self, registry: &Registry, data: &[u8], writer: Writer) -> DmResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let lines = match self.input.push(data) {
            Ok(lines) => lines,
            Err(e) => return Err(self.fail(registry, e)),
        };
        // The unfinished line belongs to the process that began it.
        if !self.input.has_partial() {
            self.partial_by = None;
        } else if !lines.is_empty() || self.partial_by.is_none() {
            self.partial_by = Some(writer);
        }
        for line in lines {
            if let Err(e) = self.add_line(registry, &line) {
                return Err(self.fail(registry, e));
            }
        }
        Ok(())
    }

    /// A flush by `closer`: makes the lines written so far take effect (creates the device or
    /// extends the table this session already made live, or loads the inactive table). An
    /// unfinished last line counts as complete when `closer` wrote it; one another process is
    /// still writing waits (a child closing its copy of the descriptor mid-line must not make
    /// half a line live).
    pub fn commit(&mut self, registry: &Registry, closer: Writer) -> DmResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.partial_by.is_some_and(|w| w.same_process(closer)) {
            self.partial_by = None;
            let taken = self.input.take_rest().and_then(|rest| match rest {
                Some(line) => self.add_line(registry, &line),
                None => Ok(()),
            });
            if let Err(e) = taken {
                return Err(self.fail(registry, e));
            }
        }
        if !self.pending {
            return Ok(());
        }
        let table = match self.builder.table() {
            Ok(t) => t,
            Err(e) => return Err(self.fail(registry, e)),
        };
        // Again as a whole: a device named by an earlier line may have been reloaded deeper.
        if let Err(e) = registry.check_depth(&self.name, self.live_device(), &table.devices()) {
            return Err(self.fail(registry, e));
        }
        let result = match &mut self.target {
            TableTarget::Create {
                device: Some(device),
            } => registry.set_live_table(device, table),
            TableTarget::Create { device } => {
                let owner = registry.policy.owner_for(&self.caller);
                registry
                    .create(&self.name, table, self.read_only, owner)
                    .map(|d| {
                        d.creating.store(true, Ordering::SeqCst);
                        *device = Some(d);
                    })
            }
            TableTarget::Reload { device } => registry.load(&self.name, device, table),
        };
        if let Err(e) = result {
            return Err(self.fail(registry, e));
        }
        // A device that went live holds its name itself.
        if let TableTarget::Create { device: Some(_) } = self.target {
            self.holds_name = false;
        }
        self.pending = false;
        Ok(())
    }

    /// The release after the last close: commits nothing (no error could reach anyone now).
    /// Text no flush took is discarded with a line in `ctl/errors`; a create that never went
    /// live gives its name back.
    pub fn close(mut self, registry: &Registry) {
        if let TableTarget::Create { device: Some(d) } = &self.target {
            d.creating.store(false, Ordering::SeqCst);
        }
        if self.failed.is_none() {
            let unfinished = matches!(self.input.take_rest(), Ok(Some(_)) | Err(_));
            if self.pending || unfinished {
                let err = DmError::invalid(
                    "table text written but never flushed by its writer: discarded",
                );
                self.fail(registry, err);
            }
        }
        if let TableTarget::Create { device: None } = self.target {
            self.release_name(registry);
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
    /// `ctl/suspend`: NAME
    Suspend,
    /// `ctl/resume`: NAME
    Resume,
    /// `ctl/rename`: OLD NEW
    Rename,
    /// `ctl/message`: NAME SECTOR MESSAGE...
    Message,
}

impl Command {
    pub const ALL: [Command; 5] = [
        Command::Remove,
        Command::Suspend,
        Command::Resume,
        Command::Rename,
        Command::Message,
    ];

    /// The operation's name: also the file's name under `ctl/`.
    pub fn operation(self) -> &'static str {
        match self {
            Command::Remove => "remove",
            Command::Suspend => "suspend",
            Command::Resume => "resume",
            Command::Rename => "rename",
            Command::Message => "message",
        }
    }

    /// Runs one line written by `caller`. Blank lines do nothing.
    pub fn run(self, registry: &Registry, caller: &Caller, line: &str) -> DmResult<()> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(&name) = words.first() else {
            return Ok(());
        };
        // A device `caller` may manage.
        let find = |name: &str| {
            registry
                .find(name)
                .and_then(|d| registry.check_manager(caller, &d).map(|()| d))
        };
        let result = match (self, &words[..]) {
            (Command::Remove, [name]) => registry.remove(name, caller),
            (Command::Suspend, [name]) => find(name).and_then(|_| registry.suspend(name)),
            (Command::Resume, [name]) => find(name).and_then(|_| registry.resume(name)),
            (Command::Rename, [old, new]) => registry.rename(old, new, caller),
            (Command::Message, [name, sector, message @ ..]) if !message.is_empty() => find(name)
                .and_then(|d| registry.message(&d, sector, message))
                .map(|reply| {
                    if !reply.is_empty() {
                        log::info!("message {name}: {reply}");
                    }
                }),
            (Command::Remove | Command::Suspend | Command::Resume, _) => {
                Err(DmError::invalid("expected one device name per line"))
            }
            (Command::Rename, _) => Err(DmError::invalid("expected 'OLD NEW'")),
            (Command::Message, _) => Err(DmError::invalid("Invalid target message parameters.")),
        };
        result.inspect_err(|e| registry.errors.record(self.operation(), name, e))
    }
}

/// Input to a command file: lines run as they complete, with the rights of the process that
/// opened the file.
pub struct CommandInput {
    command: Command,
    caller: Caller,
    input: LineBuffer,
}

impl CommandInput {
    pub fn new(command: Command, caller: Caller) -> CommandInput {
        CommandInput {
            command,
            caller,
            input: LineBuffer::default(),
        }
    }

    pub fn write(&mut self, registry: &Registry, data: &[u8]) -> DmResult<()> {
        let lines = self
            .input
            .push(data)
            .inspect_err(|e| registry.errors.record(self.command.operation(), "", e))?;
        lines
            .iter()
            .try_for_each(|l| self.command.run(registry, &self.caller, l))
    }

    /// Runs an unfinished last line (`echo -n NAME > ctl/remove`).
    pub fn flush(&mut self, registry: &Registry) -> DmResult<()> {
        match self.input.take_rest() {
            Ok(Some(line)) => self.command.run(registry, &self.caller, &line),
            Ok(None) => Ok(()),
            Err(e) => {
                registry.errors.record(self.command.operation(), "", &e);
                Err(e)
            }
        }
    }
}

/// Input to `dm/NAME/uuid`: the uuid is set, once, when the writer flushes.
pub struct UuidInput {
    device: Arc<Device>,
    caller: Caller,
    input: LineBuffer,
}

impl UuidInput {
    pub fn new(device: Arc<Device>, caller: Caller) -> UuidInput {
        UuidInput {
            device,
            caller,
            input: LineBuffer::default(),
        }
    }

    pub fn write(&mut self, registry: &Registry, data: &[u8]) -> DmResult<()> {
        let name = self.device.name();
        for line in self
            .input
            .push(data)
            .inspect_err(|e| registry.errors.record("uuid", &name, e))?
        {
            self.set(registry, &line)?;
        }
        Ok(())
    }

    pub fn flush(&mut self, registry: &Registry) -> DmResult<()> {
        let name = self.device.name();
        match self
            .input
            .take_rest()
            .inspect_err(|e| registry.errors.record("uuid", &name, e))?
        {
            Some(line) => self.set(registry, &line),
            None => Ok(()),
        }
    }

    fn set(&self, registry: &Registry, line: &str) -> DmResult<()> {
        let uuid = line.trim();
        if uuid.is_empty() {
            return Ok(());
        }
        let name = self.device.name();
        registry
            .check_manager(&self.caller, &self.device)
            .and_then(|()| registry.set_uuid(&name, uuid))
            .inspect_err(|e| registry.errors.record("uuid", &name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_splits_and_bounds() {
        let mut b = LineBuffer::default();
        let text = |lines: Vec<Zeroizing<String>>| -> Vec<String> {
            lines.iter().map(|l| l.to_string()).collect()
        };
        assert_eq!(text(b.push(b"ab").unwrap()), Vec::<String>::new());
        assert_eq!(text(b.push(b"c\nd\n\ne").unwrap()), vec!["abc", "d", ""]);
        // Growing the unfinished line keeps its bytes.
        let long = vec![b'k'; 1000];
        assert!(b.push(&long).unwrap().is_empty());
        assert_eq!(
            b.take_rest().unwrap().as_deref().map(|s| s.len()),
            Some(1001)
        );
        assert_eq!(b.take_rest().unwrap(), None);
        assert!(b.push(&vec![b'x'; MAX_LINE_BYTES + 1]).is_err());
        assert!(b.push(&[0xff, 0xfe, b'\n']).is_err());
    }
}
