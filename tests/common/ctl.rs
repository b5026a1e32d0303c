//! The ctl/ verbs and dev/ accessors every test file uses, one version each, as methods on
//! `Mount`: create, reload, suspend, resume, remove, status and the rest, each naming its
//! waiting and error behaviour.
//!
//! Two flavours where tests need both: the `io::Result` ones (`write_table`, `ctl`) give the
//! errno back for a test that expects a refusal; the others (`create`, `reload`, `remove`...)
//! must succeed and panic with the reason, `ctl/errors` and the daemon log.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use super::{CacheMode, Mount, cache_mode, write_through_flags};

/// close(2) of a descriptor, with its error: dmfs answers table and command writes there too,
/// and dropping a `File` throws that answer away.
pub fn checked_close(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd` and is closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A shell snippet that removes each device in `names`, retrying for up to 5 s while the
/// asynchronous release of a just-closed handle has not reached dmfs yet (EBUSY), and fails
/// if a device is still there afterwards: for scripts and cleanup steps run by `Mount::sh`.
pub fn remove_retrying(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "for i in $(seq 100); do echo {n} > $MNT/ctl/remove 2>/dev/null && break; sleep 0.05; done; \
                 test ! -e $MNT/dev/{n}\n"
            )
        })
        .collect()
}

/// `table` with its final newline (added when it has none).
fn with_newline(table: &str) -> String {
    if table.ends_with('\n') {
        table.to_string()
    } else {
        format!("{table}\n")
    }
}

impl Mount {
    /// Writes `text` as it is into ctl/DIR/NAME (`create` or `reload`) with one write(2) and
    /// closes the file, returning the first failure with its errno.
    pub fn write_table(&self, dir: &str, name: &str, text: &str) -> io::Result<()> {
        self.write_table_mode(dir, name, text, 0o666)
    }

    /// `write_table`, the ctl/DIR/NAME file created with `mode`: a create whose mode has no
    /// write permission makes a read-only device.
    pub fn write_table_mode(&self, dir: &str, name: &str, text: &str, mode: u32) -> io::Result<()> {
        let path = self.mnt.join("ctl").join(dir).join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        checked_close(f)
    }

    /// Writes `LINE\n` into ctl/FILE (remove, suspend, resume, rename, message) with one
    /// write(2) and closes it, returning the first failure with its errno.
    pub fn ctl(&self, file: &str, line: &str) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .open(self.mnt.join("ctl").join(file))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        checked_close(f)
    }

    /// Panics on `r`'s error, naming `what`, with ctl/errors and the daemon log.
    pub fn must(&self, what: &str, r: io::Result<()>) {
        if let Err(e) = r {
            panic!(
                "{what}: {e}\nctl/errors:\n{}\nlog:\n{}",
                self.read("ctl/errors"),
                self.log()
            );
        }
    }

    /// Creates device NAME with `table` (its final newline added when missing); it must
    /// succeed and dev/NAME must appear.
    pub fn create(&self, name: &str, table: &str) {
        let r = self.write_table("create", name, &with_newline(table));
        self.must(&format!("create {name}: {table}"), r);
        assert!(
            self.mnt.join("dev").join(name).exists(),
            "dev/{name} missing"
        );
    }

    /// Creates device NAME with `table` (its final newline added when missing); the refusal,
    /// if any, as one line with the errno and the newest line of ctl/errors: for tests that
    /// collect every mismatch before they fail.
    pub fn try_create(&self, name: &str, table: &str) -> Result<(), String> {
        self.write_table("create", name, &with_newline(table))
            .map_err(|e| format!("create failed ({e}); ctl/errors: {:?}", self.last_error()))
    }

    /// Loads `table` as NAME's inactive table; it must succeed.
    pub fn reload(&self, name: &str, table: &str) {
        let r = self.write_table("reload", name, &with_newline(table));
        self.must(&format!("reload {name}: {table}"), r);
    }

    /// Suspends NAME; it must succeed.
    pub fn suspend(&self, name: &str) {
        self.must(&format!("suspend {name}"), self.ctl("suspend", name));
    }

    /// Resumes NAME; it must succeed.
    pub fn resume(&self, name: &str) {
        self.must(&format!("resume {name}"), self.ctl("resume", name));
    }

    /// reload + suspend + resume, as lvm swaps a table.
    pub fn replace_table(&self, name: &str, table: &str) {
        self.reload(name, table);
        self.suspend(name);
        self.resume(name);
    }

    /// Removes a device, retrying for up to 10 s while the asynchronous release of a
    /// just-closed handle has not reached dmfs yet (EBUSY); any other failure panics, and the
    /// device must then be gone.
    pub fn remove(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.ctl("remove", name) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!(
                    "remove {name}: {e}\nctl/errors:\n{}",
                    self.read("ctl/errors")
                ),
            }
        }
        assert!(
            !self.mnt.join("dev").join(name).exists(),
            "dev/{name} still there"
        );
    }

    /// `dmsetup status NAME`, without the newline.
    pub fn status(&self, name: &str) -> String {
        self.read(&format!("dm/{name}/status"))
            .strip_suffix('\n')
            .expect("status ends with a newline")
            .to_string()
    }

    /// Waits up to 30 s for `status` of NAME to become `want` (a merge running in the
    /// background); panics with the last status seen.
    pub fn wait_status(&self, name: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(name);
            if s == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: status {s:?}, waiting for {want:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The event number `dmsetup info NAME` shows.
    pub fn event_nr(&self, name: &str) -> u32 {
        let info = self.read(&format!("dm/{name}/info"));
        info.lines()
            .find_map(|l| l.strip_prefix("Event number:"))
            .unwrap_or_else(|| panic!("no event number in {info:?}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Opens dev/NAME for reading and writing; O_DIRECT in writeback mode
    /// (`write_through_flags`), so a write is dmfs's (status lines, exception counts, backing
    /// files) as soon as it returns.
    pub fn open_dev(&self, name: &str) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(write_through_flags())
            .open(self.mnt.join("dev").join(name))
            .unwrap_or_else(|e| panic!("open dev/{name}: {e}"))
    }

    /// The whole of dev/NAME, read with one read-only open.
    pub fn read_dev(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.mnt.join("dev").join(name))
    }

    /// The size of dev/NAME that stat(2) shows.
    pub fn dev_size(&self, name: &str) -> u64 {
        std::fs::metadata(self.mnt.join("dev").join(name))
            .unwrap_or_else(|e| panic!("stat dev/{name}: {e}"))
            .len()
    }

    /// Writes `data` at byte `off` of dev/NAME with one dd write(2), conv=notrunc, through the
    /// page cache as the mount's cache mode has it: in writeback mode the bytes reach dmfs at
    /// dd's close.
    pub fn dd_write(&self, dev: &str, off: u64, data: &[u8]) {
        self.dd(dev, off, data, "seek_bytes");
    }

    /// `dd_write` whose bytes are dmfs's when dd's write(2) returns: oflag=direct when
    /// `direct` is asked for, and always in writeback mode (see `write_through_flags`).
    pub fn dd_write_through(&self, dev: &str, off: u64, data: &[u8], direct: bool) {
        let direct = direct || cache_mode() == CacheMode::Writeback;
        let oflag = if direct {
            "direct,seek_bytes"
        } else {
            "seek_bytes"
        };
        self.dd(dev, off, data, oflag);
    }

    fn dd(&self, dev: &str, off: u64, data: &[u8], oflag: &str) {
        std::fs::write(self.path("data.bin"), data).unwrap();
        self.ok(&format!(
            "dd if=data.bin of=$MNT/dev/{dev} bs=16M oflag={oflag} seek={off} conv=notrunc status=none"
        ));
    }
}
