//! dmsetup-style verbs over a mount's files: the same names, output and exit codes as dmsetup
//! for the same state, so dmsetup scripts run with the word `dmsetup` swapped for `dmfs`.
//! Everything here goes through the mount's files, as any other user of the mount would.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::secret::{Secret, Zeroizing};

/// The uuid of the LUKS volume at `path`, if it holds one (a header that cannot be read is
/// none: the activation goes on without it).
fn luks_uuid(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    crate::activate::luks::uuid(&f).ok().flatten()
}

/// Whether activation finds anything on `path`: a partition table or an LVM PV label. An
/// opened LUKS volume that holds a filesystem holds neither, and is left as it is.
fn holds_volumes(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    crate::activate::lvm::has_label(&f, size)
        || crate::activate::partitions::scan(&f, "probe").is_ok_and(|t| !t.partitions.is_empty())
}

/// The partitions a report says were mapped, from kpartx's `add map NAME (MAJOR:MINOR): 0 LEN
/// linear IMAGE START` lines, that hold a LUKS volume: their names and the volumes' uuids.
/// Each is probed in the image itself, not through its device: a round trip through the mount
/// per partition would cost more than all the rest of an activation.
fn luks_partitions(report: &[u8]) -> Vec<(String, String)> {
    use crate::activate::partitions::Window;
    use crate::units::Sectors;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(report).lines() {
        let Some((name, table)) = line
            .strip_prefix("add map ")
            .and_then(|l| l.split_once(" ("))
            .and_then(|(name, rest)| rest.split_once("): ").map(|(_, t)| (name, t)))
        else {
            continue;
        };
        let words: Vec<&str> = table.split(' ').collect();
        let [_, len, "linear", image, start] = words[..] else {
            continue;
        };
        let (Ok(len), Ok(start), Ok(file)) = (len.parse(), start.parse(), File::open(image)) else {
            continue;
        };
        let window = Window {
            dev: &file,
            start: Sectors(start),
            len: Sectors(len),
        };
        if let Ok(Some(uuid)) = crate::activate::luks::uuid(&window) {
            found.push((name.to_string(), uuid));
        }
    }
    found
}

/// What the last line written into `ctl/activate` made, from its start.
fn read_report(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = f.read_at(&mut buf, text.len() as u64) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    text
}

/// A failed verb: dmsetup prints the message, then "Command failed.", and exits 1.
pub struct Failed(pub String);

pub type CliResult = Result<(), Failed>;

/// The mount to act on: `--mount`, then `$DMFS_MOUNT`, then the only dmfs mount in
/// /proc/mounts.
pub fn find_mount(explicit: Option<PathBuf>) -> Result<PathBuf, Failed> {
    if let Some(m) = explicit.or_else(|| std::env::var_os("DMFS_MOUNT").map(PathBuf::from)) {
        return Ok(m);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[0] == "dmfs" && f[2].starts_with("fuse")).then(|| PathBuf::from(f[1]))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failed(
            "no dmfs mount found: mount one with `dmfs mount MNT`, or name it with --mount".into(),
        )),
        _ => Err(Failed(
            "several dmfs mounts: choose one with --mount or DMFS_MOUNT".into(),
        )),
    }
}

/// Sectors a merge still has to copy, from snapshot status `ALLOCATED/TOTAL METADATA`; None
/// for `Invalid` / `Merge failed`.
fn merge_left(info: &str) -> Option<u64> {
    let (usage, metadata) = info.split_once(' ')?;
    let allocated: u64 = usage.split_once('/')?.0.parse().ok()?;
    let metadata: u64 = metadata.trim().parse().ok()?;
    Some(allocated.saturating_sub(metadata))
}

/// Tables at least this long show progress, in steps of this many lines.
const PROGRESS_LINES: usize = 1000;

pub struct Mount {
    root: PathBuf,
    /// Report progress of long work on stderr.
    progress: bool,
}

/// The reason dmfs recorded for the latest failure, to show beside the errno.
fn last_reason(root: &Path) -> String {
    let errors = std::fs::read_to_string(root.join("ctl/errors")).unwrap_or_default();
    errors
        .lines()
        .last()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
        .unwrap_or_default()
}

fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

impl Mount {
    pub fn new(root: PathBuf, progress: bool) -> Mount {
        Mount { root, progress }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// dmsetup's words for an ioctl that failed, plus dmfs's reason.
    fn ioctl_failed(&self, ioctl: &str, name: &str, e: &std::io::Error) -> Failed {
        Failed(format!(
            "device-mapper: {ioctl} ioctl on {name}  failed: {}\n{}",
            strerror(e),
            last_reason(&self.root)
        ))
    }

    fn exists(&self, name: &str) -> bool {
        !name.is_empty() && !name.contains('/') && self.path(&format!("dm/{name}")).is_dir()
    }

    /// A file's text. A table may hold a key: the text is wiped when dropped (`std::fs::read`
    /// sizes its buffer from the file's size once, so no smaller copy is left behind).
    fn read(&self, rel: &str) -> Result<Zeroizing<String>, Failed> {
        let bytes = Zeroizing::new(
            std::fs::read(self.path(rel))
                .map_err(|e| Failed(format!("{rel}: {}", strerror(&e))))?,
        );
        crate::secret::text(bytes).ok_or_else(|| Failed(format!("{rel}: not UTF-8 text")))
    }

    /// Writes lines into a ctl file; the write or the close carries dmfs's answer.
    fn command(&self, file: &str, ioctl: &str, name: &str, line: &str) -> CliResult {
        let mut f = OpenOptions::new()
            .write(true)
            .open(self.path(file))
            .map_err(|e| self.ioctl_failed(ioctl, name, &e))?;
        // A message line may hold a key (`key set`): this copy is wiped too.
        f.write_all(Zeroizing::new(format!("{line}\n")).as_bytes())
            .map_err(|e| self.ioctl_failed(ioctl, name, &e))
    }

    /// Writes a table into ctl/create/NAME or ctl/reload/NAME.
    fn write_table(&self, dir: &str, ioctl: &str, name: &str, table: &str, mode: u32) -> CliResult {
        let f = self.write_table_open(dir, ioctl, name, table, mode)?;
        self.close_checked(f, ioctl, name)
    }

    /// Opens `ctl/DIR/NAME` and writes the table into it, leaving the file open: the table
    /// takes effect at a close.
    fn write_table_open(
        &self,
        dir: &str,
        ioctl: &str,
        name: &str,
        table: &str,
        mode: u32,
    ) -> Result<File, Failed> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(self.path(&format!("ctl/{dir}/{name}")))
            .map_err(|e| self.ioctl_failed(ioctl, name, &e))?;
        // Written in slices of the caller's text, never copied: a crypt table holds a key.
        // Each line is checked as it is written, so a large table is worth reporting on.
        let total = table.split_inclusive('\n').count();
        let show = self.progress && total >= PROGRESS_LINES;
        let (mut start, mut end, mut done) = (0, 0, 0);
        let mut lines = table.split_inclusive('\n').peekable();
        while let Some(line) = lines.next() {
            end += line.len();
            done += 1;
            if done % PROGRESS_LINES != 0 && lines.peek().is_some() {
                continue;
            }
            f.write_all(&table.as_bytes()[start..end])
                .map_err(|e| self.ioctl_failed(ioctl, name, &e))?;
            start = end;
            if show {
                eprint!("\r{ioctl} {name}: {done}/{total} table lines checked");
            }
        }
        if !table.ends_with('\n') {
            f.write_all(b"\n")
                .map_err(|e| self.ioctl_failed(ioctl, name, &e))?;
        }
        if show {
            eprintln!();
        }
        Ok(f)
    }

    /// Closes a `ctl/` file, with close(2)'s answer: a table takes effect at its close.
    fn close_checked(&self, f: File, ioctl: &str, name: &str) -> CliResult {
        let fd = f.into_raw_fd();
        // SAFETY: `fd` was just taken from the File, which no longer owns it.
        if unsafe { libc::close(fd) } != 0 {
            return Err(self.ioctl_failed(ioctl, name, &std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `create [-u UUID]`: a uuid is part of the create, as dmsetup passes it with
    /// DM_DEV_CREATE, so it raises no event: it is set while `ctl/create/NAME` is still open
    /// (the table goes live at the close of a duplicate of the descriptor). A uuid refused
    /// leaves no device behind.
    pub fn create(
        &self,
        name: &str,
        table: &str,
        uuid: Option<&str>,
        read_only: bool,
    ) -> CliResult {
        let mode = if read_only { 0o444 } else { 0o644 };
        let f = self.write_table_open("create", "create", name, table, mode)?;
        let live = f
            .try_clone()
            .map_err(|e| self.ioctl_failed("create", name, &e))
            .and_then(|dup| self.close_checked(dup, "create", name));
        let with_uuid = live.and_then(|()| match (self.exists(name), uuid) {
            (false, _) => Err(Failed(format!(
                "device-mapper: create ioctl on {name}  failed\n{}",
                last_reason(&self.root)
            ))),
            (true, Some(uuid)) => self.set_uuid(name, uuid),
            (true, None) => Ok(()),
        });
        let closed = self.close_checked(f, "create", name);
        if with_uuid.is_err() && uuid.is_some() && self.exists(name) {
            let _ = self.command("ctl/remove", "remove", name, name);
        }
        with_uuid.and(closed)
    }

    pub fn reload(&self, name: &str, table: &str) -> CliResult {
        self.write_table("reload", "reload", name, table, 0o644)
    }

    /// `remove [-f]`: with force, the table is first replaced by `error` (I/O to it fails from
    /// then on), as dmsetup's --force does, so a device still open is at least harmless.
    pub fn remove(&self, name: &str, force: bool) -> CliResult {
        if force && self.exists(name) {
            let size = std::fs::metadata(self.path(&format!("dev/{name}")))
                .map(|m| m.len() / 512)
                .unwrap_or(0);
            self.reload(name, &format!("0 {size} error"))?;
            self.command("ctl/resume", "resume", name, name)?;
        }
        self.command("ctl/remove", "remove", name, name)
    }

    /// `resume`; with progress on, a table that starts a snapshot merge is followed until the
    /// merge is done, as lvconvert --merge does.
    pub fn resume(&self, name: &str) -> CliResult {
        self.simple("resume", name)?;
        if self.progress {
            self.follow_merge(name)?;
        }
        Ok(())
    }

    /// Polls a snapshot-merge device's status, reporting the share merged so far, until no
    /// exception is left (allocated == metadata sectors), the merge fails, or the device is
    /// suspended (which pauses the merge).
    fn follow_merge(&self, name: &str) -> CliResult {
        let mut first: Option<u64> = None;
        loop {
            let status = self.read(&format!("dm/{name}/status"))?;
            let Some(info) = status.lines().find_map(|l| {
                let mut f = l.splitn(4, ' ');
                (f.nth(2) == Some("snapshot-merge")).then(|| f.next().unwrap_or("").to_string())
            }) else {
                return Ok(());
            };
            let Some(left) = merge_left(&info) else {
                eprintln!();
                return Err(Failed(format!("{name}: merge stopped: {info}")));
            };
            let total = *first.get_or_insert(left);
            let done = if total == 0 {
                100.0
            } else {
                100.0 * (total - left.min(total)) as f64 / total as f64
            };
            eprint!("\r{name}: merged {done:.1}% ({left} sectors left)");
            if left == 0 {
                eprintln!();
                return Ok(());
            }
            if self.read(&format!("dm/{name}/suspended"))?.trim() == "1" {
                eprintln!();
                eprintln!("{name}: suspended, the merge is paused until resume");
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    pub fn simple(&self, verb: &str, name: &str) -> CliResult {
        self.command(&format!("ctl/{verb}"), verb, name, name)
    }

    pub fn rename(&self, old: &str, new: &str) -> CliResult {
        self.command("ctl/rename", "rename", old, &format!("{old} {new}"))
    }

    /// `rename NAME --setuuid UUID`.
    pub fn set_uuid(&self, name: &str, uuid: &str) -> CliResult {
        if !self.exists(name) {
            return Err(Failed("Device does not exist.".into()));
        }
        let err = |e: std::io::Error| self.ioctl_failed("rename", name, &e);
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(&format!("dm/{name}/uuid")))
            .map_err(err)?;
        f.write_all(format!("{uuid}\n").as_bytes())
            .map_err(|e| self.ioctl_failed("rename", name, &e))
    }

    /// The line is built in one wiped buffer of its final size (growing one would free an
    /// unwiped copy): a crypt target's `key set` carries the key.
    pub fn message(&self, name: &str, sector: &str, words: &[String]) -> CliResult {
        let len = name.len() + 1 + sector.len() + words.iter().map(|w| w.len() + 1).sum::<usize>();
        let mut line = Zeroizing::new(String::with_capacity(len));
        line.push_str(name);
        line.push(' ');
        line.push_str(sector);
        for w in words {
            line.push(' ');
            line.push_str(w);
        }
        self.command("ctl/message", "message", name, &line)
    }

    /// Device names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("dev"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `table`/`status`/`deps`/`info`: one device, or every device with "NAME: " before each
    /// line (info: records one after another), as dmsetup prints them.
    /// `table [--inactive] [--showkeys]`: crypt keys print as zeros unless `showkeys`, as
    /// dmsetup prints them.
    pub fn table(
        &self,
        name: Option<&str>,
        inactive: bool,
        showkeys: bool,
        out: &mut impl Write,
    ) -> CliResult {
        let file = if inactive { "inactive-table" } else { "table" };
        let mut text = Zeroizing::new(Vec::new());
        self.report(file, name, &mut *text)?;
        let text = String::from_utf8_lossy(&text);
        if showkeys {
            let _ = out.write_all(text.as_bytes());
        } else {
            let _ = out.write_all(crate::secret::mask_keys(&text).as_bytes());
        }
        Ok(())
    }

    pub fn report(&self, file: &str, name: Option<&str>, out: &mut impl Write) -> CliResult {
        let missing = |name: &str| match file {
            "table" => Failed(format!(
                "device-mapper: table ioctl on {name}  failed: No such device or address"
            )),
            _ => Failed("Device does not exist.".into()),
        };
        match name {
            Some(name) => {
                if !self.exists(name) {
                    return Err(missing(name));
                }
                let text = self.read(&format!("dm/{name}/{file}"))?;
                let _ = out.write_all(text.as_bytes());
            }
            None => {
                let names = self.names();
                if names.is_empty() {
                    let _ = writeln!(out, "No devices found");
                }
                for name in names {
                    let text = self.read(&format!("dm/{name}/{file}")).unwrap_or_default();
                    if file == "info" {
                        let _ = out.write_all(text.as_bytes());
                    } else {
                        for line in text.lines() {
                            let _ = writeln!(out, "{name}: {line}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `activate`: the images as one line of `ctl/activate` (one activation: a volume group
    /// may span them), by absolute path, printing what was made as kpartx -v and vgchange
    /// print it. Then every LUKS volume found, on an image itself or on a partition just
    /// mapped, is opened as `luks-<UUID>` (as distributions name it) with the key `unlock`
    /// reads, exactly as `dmfs open` opens it, and what is inside it is activated in turn:
    /// LVM on LUKS on a partition comes up in one call. All or nothing: a failure removes
    /// everything this call made, as `deactivate` would.
    pub fn activate(
        &self,
        images: &[PathBuf],
        read_only: bool,
        partitions_only: bool,
        unlock: &OpenRequest,
        out: &mut impl Write,
    ) -> Result<(), OpenFailed> {
        let failed = |Failed(msg)| OpenFailed(1, format!("{msg}\nCommand failed."));
        let mut plain = Vec::new();
        let mut volumes = Vec::new();
        for image in images {
            let abs = std::path::absolute(image)
                .map_err(|e| failed(Failed(format!("{}: {}", image.display(), strerror(&e)))))?;
            // --partitions-only is kpartx alone: no LUKS volume is opened.
            match luks_uuid(&abs).filter(|_| !partitions_only) {
                Some(uuid) => volumes.push((abs, uuid)),
                None => plain.push(abs),
            }
        }
        let mut made: Vec<String> = Vec::new();
        if !plain.is_empty() {
            let report = self
                .activate_line(&plain, read_only, partitions_only)
                .map_err(failed)?;
            let _ = out.write_all(&report);
            made.extend(plain.iter().map(|p| p.display().to_string()));
            if !partitions_only {
                for (name, uuid) in luks_partitions(&report) {
                    volumes.push((self.path(&format!("dev/{name}")), uuid));
                }
            }
        }
        for (device, uuid) in volumes {
            let name = format!("luks-{uuid}");
            let request = OpenRequest {
                kind: None,
                device,
                name: name.clone(),
                read_only,
                ..unlock.clone()
            };
            if let Err(e) = self.open(&request) {
                self.undo(&made);
                return Err(e);
            }
            made.push(name.clone());
            let inside = self.path(&format!("dev/{name}"));
            if !holds_volumes(&inside) {
                continue;
            }
            match self.activate_line(&[inside], read_only, partitions_only) {
                Ok(report) => {
                    let _ = out.write_all(&report);
                }
                Err(e) => {
                    self.undo(&made);
                    return Err(failed(e));
                }
            }
        }
        Ok(())
    }

    /// Removes what a failed `activate` made (images by path, opened volumes by name),
    /// holders first, as `deactivate` does.
    fn undo(&self, made: &[String]) {
        if !made.is_empty() {
            let _ = self.deactivate(made, false, &mut std::io::sink());
        }
    }

    /// One line into `ctl/activate`; what it made, as kpartx and vgchange print it.
    fn activate_line(
        &self,
        paths: &[PathBuf],
        read_only: bool,
        partitions_only: bool,
    ) -> Result<Vec<u8>, Failed> {
        let mut line = String::new();
        if read_only {
            line += "--readonly ";
        }
        if partitions_only {
            line += "--partitions-only ";
        }
        for path in paths {
            match one_word(path) {
                Some(t) => line += &format!("{t} "),
                None => {
                    return Err(Failed(format!(
                        "{}: a path with whitespace or not UTF-8 cannot be activated",
                        path.display()
                    )));
                }
            }
        }
        line.pop();
        line.push('\n');
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path("ctl/activate"))
            .map_err(|e| Failed(format!("ctl/activate: {}", strerror(&e))))?;
        (&f).write_all(line.as_bytes()).map_err(|e| {
            Failed(format!(
                "activate: {}\n{}",
                strerror(&e),
                last_reason(&self.root)
            ))
        })?;
        Ok(read_report(&f))
    }

    /// `deactivate [-f]`: the arguments as one line of `ctl/deactivate` (one all-or-nothing
    /// removal), printing what went as vgchange -an and kpartx -d -v print it. Relative image
    /// paths are the daemon's to resolve, against this process's directory. What a `-f` run
    /// removed is printed even when it then fails on the open devices it left.
    pub fn deactivate(&self, args: &[String], force: bool, out: &mut impl Write) -> CliResult {
        if let Some(bad) = args.iter().find(|a| a.contains(char::is_whitespace)) {
            return Err(Failed(format!(
                "{bad}: an argument with whitespace cannot be deactivated"
            )));
        }
        let mut line = if force {
            "--force ".to_string()
        } else {
            String::new()
        };
        line += &args.join(" ");
        line.push('\n');
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path("ctl/deactivate"))
            .map_err(|e| Failed(format!("ctl/deactivate: {}", strerror(&e))))?;
        let written = (&f).write_all(line.as_bytes());
        let _ = out.write_all(&read_report(&f));
        written.map_err(|e| {
            Failed(format!(
                "deactivate: {}\n{}",
                strerror(&e),
                last_reason(&self.root)
            ))
        })
    }

    /// `ls`: NAME<TAB>(major:minor), or "No devices found".
    pub fn ls(&self, out: &mut impl Write) -> CliResult {
        let names = self.names();
        if names.is_empty() {
            let _ = writeln!(out, "No devices found");
        }
        for name in names {
            let info = self.read(&format!("dm/{name}/info")).unwrap_or_default();
            let mm = info
                .lines()
                .find_map(|l| l.strip_prefix("Major, minor:"))
                .map(|v| v.trim().replace(", ", ":"))
                .unwrap_or_default();
            let _ = writeln!(out, "{name}\t({mm})");
        }
        Ok(())
    }

    /// The `Field: value` lines of dm/NAME/info.
    fn info_fields(&self, name: &str) -> Vec<(String, String)> {
        self.read(&format!("dm/{name}/info"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// `info -c`: one row per device in dmsetup's columns.
    pub fn info_columns(&self, name: Option<&str>, out: &mut impl Write) -> CliResult {
        let names = match name {
            Some(n) if !self.exists(n) => return Err(Failed("Device does not exist.".into())),
            Some(n) => vec![n.to_string()],
            None => self.names(),
        };
        if names.is_empty() {
            let _ = writeln!(out, "No devices found");
            return Ok(());
        }
        let _ = writeln!(
            out,
            "{:<16} {:>3} {:>3} {:<4} {:>4} {:>4} {:<6} {:<32}",
            "Name", "Maj", "Min", "Stat", "Open", "Targ", "Event", "UUID"
        );
        for name in names {
            let f = self.info_fields(&name);
            let get = |k: &str| {
                f.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let (maj, min) = get("Major, minor").split_once(", ").unwrap_or(("", ""));
            let state = get("State");
            let stat = format!(
                "L{}{}{}",
                if get("Tables present").contains("INACTIVE") {
                    'I'
                } else {
                    '-'
                },
                if state.starts_with("SUSPENDED") {
                    's'
                } else {
                    '-'
                },
                if state.contains("READ-ONLY") {
                    'r'
                } else {
                    'w'
                }
            );
            let _ = writeln!(
                out,
                "{:<16} {:>3} {:>3} {:<4} {:>4} {:>4} {:>6} {:<32}",
                name,
                maj,
                min,
                stat,
                get("Open count"),
                get("Number of targets"),
                get("Event number"),
                get("UUID")
            );
        }
        Ok(())
    }

    /// The entries of dm/NAME/deps: "(MNT/dev/X)", "(path)" or "(M, m)", in the kernel's order.
    fn deps(&self, name: &str) -> Vec<String> {
        let text = self.read(&format!("dm/{name}/deps")).unwrap_or_default();
        let list = text
            .split_once(':')
            .map(|(_, l)| l.trim().to_string())
            .unwrap_or_default();
        list.split(") (")
            .map(|d| d.trim_matches(|c| c == '(' || c == ')').to_string())
            .filter(|d| !d.is_empty())
            .collect()
    }

    /// The device of this mount a deps entry names, if it is one.
    fn mapped_name(&self, dep: &str) -> Option<String> {
        let dev = self.root.join("dev");
        Path::new(dep)
            .parent()
            .filter(|p| *p == dev)
            .and_then(|_| Path::new(dep).file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }

    fn ls_line(&self, name: &str) -> String {
        let f = self.info_fields(name);
        let mm = f
            .iter()
            .find(|(k, _)| k == "Major, minor")
            .map(|(_, v)| v.replace(", ", ":"))
            .unwrap_or_default();
        format!("{name} ({mm})")
    }

    /// `ls --tree`: the devices no other device uses, each with what it maps onto below it,
    /// drawn as dmsetup draws it without UTF-8.
    pub fn ls_tree(&self, out: &mut impl Write) -> CliResult {
        let names = self.names();
        if names.is_empty() {
            let _ = writeln!(out, "No devices found");
            return Ok(());
        }
        let used: Vec<String> = names
            .iter()
            .flat_map(|n| self.deps(n))
            .filter_map(|d| self.mapped_name(&d))
            .collect();
        for name in names.iter().filter(|n| !used.contains(n)) {
            let _ = writeln!(out, "{}", self.ls_line(name));
            self.tree_children(name, " ", out);
        }
        Ok(())
    }

    fn tree_children(&self, name: &str, indent: &str, out: &mut impl Write) {
        let deps = self.deps(name);
        for (i, dep) in deps.iter().enumerate() {
            let last = i + 1 == deps.len();
            let branch = if last { "`-" } else { "|-" };
            match self.mapped_name(dep) {
                Some(child) => {
                    let _ = writeln!(out, "{indent}{branch}{}", self.ls_line(&child));
                    self.tree_children(
                        &child,
                        &format!("{indent}{}", if last { "   " } else { "|  " }),
                        out,
                    );
                }
                None => {
                    let _ = writeln!(out, "{indent}{branch} ({})", dep.replace(", ", ":"));
                }
            }
        }
    }

    pub fn cat(&self, rel: &str, out: &mut impl Write) -> CliResult {
        let text = self.read(rel)?;
        let _ = out.write_all(text.as_bytes());
        Ok(())
    }
}

/// A table from `--table`, a file, or standard input (as dmsetup reads it).
pub fn read_table(
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Zeroizing<String>, Failed> {
    // A crypt table holds a key: every buffer the text passes through is wiped when let go.
    if let Some(t) = inline {
        let t = Zeroizing::new(t);
        return Ok(Zeroizing::new(t.replace(';', "\n")));
    }
    let fail = |e: std::io::Error| Failed(format!("reading the table: {}", strerror(&e)));
    let mut input: Box<dyn Read> = match file {
        Some(path) => Box::new(File::open(&path).map_err(fail)?),
        None => Box::new(std::io::stdin()),
    };
    let mut text = Secret::default();
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        match input.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => crate::secret::extend(&mut text, &chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    crate::secret::text(text)
        .ok_or_else(|| Failed("reading the table: not valid UTF-8 text".into()))
}

/// `dmfs open`: what to open and how (cryptsetup open's options).
#[derive(Debug, Default, Clone)]
pub struct OpenRequest {
    /// `luks` (either version), `luks1`, `luks2` or `plain`; `None`: `luks`.
    pub kind: Option<String>,
    pub device: PathBuf,
    pub name: String,
    pub key_file: Option<PathBuf>,
    pub keyfile_offset: u64,
    /// Bytes; 0: all of it (up to cryptsetup's 8 MiB).
    pub keyfile_size: usize,
    pub header: Option<PathBuf>,
    pub read_only: bool,
    pub allow_discards: bool,
    /// Plain mode's parameters (ignored for LUKS).
    pub plain: crate::activate::luks::PlainParams,
}

/// A failed `dmfs open`: the exit status cryptsetup gives the same failure, and the line.
pub struct OpenFailed(pub i32, pub String);

/// Where `dmfs open` reads its key, as cryptsetup 2.6.1's `tools_get_key` does (`passphrase`):
/// a key file, the terminal without echo, or standard input up to a newline. `plain_key` is
/// plain mode's key size when a key file is the key itself: then exactly that many bytes.
fn key_source(o: &OpenRequest, plain_key: Option<usize>) -> crate::passphrase::KeySource {
    crate::passphrase::KeySource {
        key_file: o.key_file.clone(),
        offset: o.keyfile_offset,
        size: match (plain_key, o.keyfile_size) {
            (Some(k), _) => Some(k as u64),
            (None, 0) => None,
            (None, n) => Some(n as u64),
        },
    }
}

fn read_key(o: &OpenRequest, source: &crate::passphrase::KeySource) -> Result<Secret, OpenFailed> {
    source
        .read(&format!("Enter passphrase for {}: ", o.device.display()))
        .map_err(|m| OpenFailed(1, m))
}

/// `path` as one word of a line dmfs reads (a table, `ctl/activate`): UTF-8 without
/// whitespace, which dmfs's words cannot quote.
fn one_word(path: &Path) -> Option<&str> {
    path.to_str().filter(|t| !t.contains(char::is_whitespace))
}

/// An absolute path usable in a table.
fn table_path(p: &Path) -> Result<String, OpenFailed> {
    let abs = std::path::absolute(p)
        .map_err(|e| OpenFailed(4, format!("{}: {}", p.display(), strerror(&e))))?;
    match one_word(&abs) {
        Some(t) => Ok(t.to_string()),
        None => Err(OpenFailed(
            1,
            format!(
                "{}: a path with whitespace or not UTF-8 cannot be named in a table",
                p.display()
            ),
        )),
    }
}

impl Mount {
    /// `dmfs open`: reads the volume as `cryptsetup open --disable-keyring` would, and creates
    /// `NAME` with the crypt table and uuid cryptsetup gives the kernel. Exit statuses as
    /// cryptsetup's: 2 for a passphrase no key slot takes, 4 for a device that cannot be
    /// read, 5 for a name in use, 1 otherwise.
    pub fn open(&self, o: &OpenRequest) -> Result<(), OpenFailed> {
        use crate::activate::luks::{self, Flags, Kind};
        let kind = match o.kind.as_deref() {
            None | Some("luks") => None,
            Some("luks1") => Some(Some(Kind::Luks1)),
            Some("luks2") => Some(Some(Kind::Luks2)),
            Some("plain") => Some(None),
            Some(other) => {
                return Err(OpenFailed(
                    1,
                    format!("Unknown device type {other} requested."),
                ));
            }
        };
        if self.exists(&o.name) {
            return Err(OpenFailed(5, format!("Device {} already exists.", o.name)));
        }
        let reference = table_path(&o.device)?;
        let data = File::open(&o.device).map_err(|e| {
            OpenFailed(
                4,
                format!(
                    "Device {} does not exist or access denied. ({})",
                    o.device.display(),
                    strerror(&e)
                ),
            )
        })?;
        let size = crate::activate::partitions::SectorSource::size(&data);
        let flags = Flags {
            allow_discards: o.allow_discards,
            ..Default::default()
        };
        let from = |e: crate::error::DmError| {
            let code = if e.errno == libc::EPERM { 2 } else { 1 };
            OpenFailed(code, e.reason)
        };
        let opened = if kind == Some(None) {
            let mut params = o.plain.clone();
            // cryptsetup hashes nothing read from a key file in plain mode, and reads exactly
            // the key's size from it (action_open_plain).
            let from_file = o.key_file.as_deref().is_some_and(|p| p != Path::new("-"));
            if from_file {
                params.hash = None;
            }
            let key_bytes = (params.key_bits / 8) as usize;
            let pass = read_key(o, &key_source(o, from_file.then_some(key_bytes)))?;
            luks::open_plain(&params, size, &reference, &pass, flags).map_err(from)?
        } else {
            let header = match &o.header {
                Some(h) => File::open(h).map_err(|e| {
                    OpenFailed(
                        4,
                        format!(
                            "Device {} does not exist or access denied. ({})",
                            h.display(),
                            strerror(&e)
                        ),
                    )
                })?,
                None => data.try_clone().map_err(|e| OpenFailed(4, strerror(&e)))?,
            };
            match luks::detect(&header) {
                Ok(Some(_)) => {}
                Err(e) => return Err(OpenFailed(1, e.reason)),
                Ok(None) => {
                    let shown = o.header.as_deref().unwrap_or(&o.device);
                    return Err(OpenFailed(
                        1,
                        format!("Device {} is not a valid LUKS device.", shown.display()),
                    ));
                }
            }
            let opts = luks::OpenOptions {
                kind: kind.flatten(),
                flags,
            };
            // On a terminal cryptsetup asks three times (--tries), saying why after each miss.
            let source = key_source(o, None);
            let mut tries = if source.is_interactive() { 3 } else { 1 };
            loop {
                let pass = read_key(o, &source)?;
                match luks::open(&header, size, &reference, &pass, &opts) {
                    Err(e) if e.errno == libc::EPERM && tries > 1 => {
                        eprintln!("{}", e.reason);
                        tries -= 1;
                    }
                    other => break other.map_err(from)?,
                }
            }
        };
        self.create(
            &o.name,
            &opened.table,
            Some(&opened.dm_uuid(&o.name)),
            o.read_only,
        )
        .map_err(|Failed(m)| OpenFailed(1, m))
    }

    /// `dmfs close NAME`: removes a crypt device, as `cryptsetup close` does; any other device
    /// is refused.
    pub fn close(&self, name: &str) -> Result<(), OpenFailed> {
        if !self.exists(name) {
            return Err(OpenFailed(4, format!("Device {name} is not active.")));
        }
        // The status names the target type too, and holds no key.
        let status = self
            .read(&format!("dm/{name}/status"))
            .map_err(|Failed(m)| OpenFailed(1, m))?;
        let is_crypt = status
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("crypt");
        if !is_crypt {
            return Err(OpenFailed(
                1,
                format!("Device {name} is not a crypt device."),
            ));
        }
        self.command("ctl/remove", "remove", name, name)
            .map_err(|Failed(m)| {
                let busy = m.contains("Device or resource busy");
                OpenFailed(if busy { 5 } else { 1 }, m)
            })
    }
}
