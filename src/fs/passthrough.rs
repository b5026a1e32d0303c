//! FUSE passthrough (kernel 6.9+): for a device that is one linear line over the whole of a
//! regular file, read-only opens of `dev/NAME` are handed to the kernel, which then reads the
//! backing file itself at native speed instead of sending each read to dmfs.
//!
//! Only read-only opens: a passthrough write past the end of the file would grow the backing
//! file, where a device must refuse it (ENOSPC). Three things follow from the kernel, and
//! decide when passthrough is used:
//! - While a passthrough handle is open, the kernel refuses any other open of the same file
//!   that is not passthrough (EIO, measured on 6.18): a writer would be locked out. So by
//!   default (`auto`) only read-only devices use it, which no writer can open anyway;
//!   `--passthrough on` uses it for every read-only open, `off` never.
//! - No request reaches dmfs for a passthrough read: a suspend cannot hold it, and a reloaded
//!   table reaches it only at its next open. Both are logged when they happen.
//!
//! Writes through any other path (a read-write open, another device over the same file) go to
//! the backing file, whose page cache passthrough reads come from: the views stay coherent.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use fuser::{BackingId, ReplyOpen};
use parking_lot::Mutex;

use crate::device::Device;
use crate::table::Table;

/// Why a table can or cannot be served by passthrough.
fn eligible(table: &Table) -> Result<(&File, String), String> {
    let [entry] = table.entries() else {
        return Err(format!("the table has {} lines", table.entries().len()));
    };
    let dev = entry.target.identity_map().ok_or_else(|| {
        format!(
            "its target is {}, not linear from sector 0",
            entry.target_type
        )
    })?;
    if dev.size() != entry.len {
        return Err(format!(
            "it maps {} of the {} sectors of {}",
            entry.len,
            dev.size(),
            dev.name()
        ));
    }
    let file = dev
        .whole_regular_file()
        .ok_or_else(|| format!("{} is not a regular file of whole sectors", dev.name()))?;
    Ok((file, dev.name()))
}

struct Shared {
    id: Weak<BackingId>,
    table: Weak<Table>,
}

/// `--passthrough`: which read-only opens may use it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Mode {
    /// Read-only opens of read-only devices.
    Auto,
    /// Every read-only open.
    On,
    /// None.
    Off,
}

pub struct Passthrough {
    mode: Mode,
    /// Wanted and, after init, offered by the kernel.
    on: AtomicBool,
    /// Per device id: the backing id its open passthrough handles share (the kernel wants one
    /// per inode at a time) and the table it was made for.
    shared: Mutex<HashMap<u64, Shared>>,
    /// Per device id: the table whose decision was last logged.
    logged: Mutex<HashMap<u64, Weak<Table>>>,
}

impl Passthrough {
    pub fn new(mode: Mode) -> Passthrough {
        Passthrough {
            mode,
            on: AtomicBool::new(mode != Mode::Off),
            shared: Mutex::default(),
            logged: Mutex::default(),
        }
    }

    pub fn wanted(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Records whether the kernel agreed to passthrough at init.
    pub fn negotiated(&self, offered: bool) {
        if self.wanted() && !offered {
            log::info!(
                "passthrough: the kernel does not offer FUSE passthrough; reads go through dmfs"
            );
        }
        self.on.store(self.wanted() && offered, Ordering::SeqCst);
    }

    /// Logs the decision for `device`'s current table once.
    fn log_once(
        &self,
        device: &Device,
        table: &Arc<Table>,
        decision: &Result<(&File, String), String>,
    ) {
        let mut logged = self.logged.lock();
        let seen = logged
            .get(&device.id)
            .is_some_and(|t| std::ptr::eq(t.as_ptr(), Arc::as_ptr(table)));
        if seen {
            return;
        }
        logged.insert(device.id, Arc::downgrade(table));
        match decision {
            Ok((_, file)) => log::info!(
                "dev/{}: read-only opens use passthrough (one linear line over all of {file})",
                device.name()
            ),
            Err(why) => log::info!("dev/{}: no passthrough: {why}", device.name()),
        }
    }

    /// For an open of `device`: the backing id to open it with, or None to serve it through
    /// dmfs.
    pub fn for_open(
        &self,
        device: &Device,
        writing: bool,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        if !self.on.load(Ordering::SeqCst) || writing {
            return None;
        }
        let table = device.table();
        let mut shared = self.shared.lock();
        if let Some(s) = shared.get(&device.id)
            && let Some(id) = s.id.upgrade()
        {
            if std::ptr::eq(s.table.as_ptr(), Arc::as_ptr(&table)) {
                // Joins the open passthrough handles: the kernel would refuse anything else.
                return Some(id);
            }
            log::warn!(
                "dev/{}: passthrough handles opened before the last reload are still open; the kernel refuses other opens until they close",
                device.name()
            );
            return None;
        }
        if device.is_suspended() {
            return None; // a dmfs open, held by the suspend
        }
        let decision = eligible(&table).and_then(|d| {
            if self.mode == Mode::Auto && !device.is_read_only() {
                Err("the device is writable (auto uses passthrough for read-only devices; --passthrough on for every read-only open)".into())
            } else {
                Ok(d)
            }
        });
        self.log_once(device, &table, &decision);
        let (file, _) = decision.ok()?;
        match reply.open_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                shared.insert(
                    device.id,
                    Shared {
                        id: Arc::downgrade(&id),
                        table: Arc::downgrade(&table),
                    },
                );
                Some(id)
            }
            Err(e) => {
                log::warn!("passthrough: the kernel refused the backing file ({e}); turned off");
                self.on.store(false, Ordering::SeqCst);
                None
            }
        }
    }
}
