//! The mirror hook: what the registry tells a second device mapper about each change it makes,
//! and where a mirrored device's I/O goes instead of its own table.
//!
//! A plain mount uses `NoMirror`, which accepts everything and mirrors nothing; `dmfs mount
//! --kernel` uses `kernel::Kernel`, which makes every device in the kernel's device mapper too.
//! The registry calls the hook before it changes its own state, so a refusal leaves both sides
//! as they were; it owns the hook, and each device it creates holds it to ask where its I/O
//! goes (its `MirrorIo` side, a leaf below the device). The hook sits above `Device` (it takes
//! devices and tables) and below the registry and the kernel backend, so dependencies keep
//! pointing down.

use std::fs::File;
use std::sync::Arc;

use crate::device::Device;
use crate::error::DmResult;
use crate::mirror_io::MirrorIo;
use crate::table::Table;

/// A second device mapper kept in step with dmfs's devices; its devices' I/O paths are its
/// `MirrorIo` side, which each device holds.
pub trait Mirror: MirrorIo {
    /// A device about to be created with its live table (and read-only flag).
    fn create(&self, device: &Device, read_only: bool) -> DmResult<()>;
    /// `table` about to become `device`'s inactive table (reload).
    fn load(&self, device: &Device, table: &Table) -> DmResult<()>;
    /// `table` about to become `device`'s live table at once (a create session extending it).
    fn replace_live(&self, device: &Device, table: &Table) -> DmResult<()>;
    /// `device` has been suspended in dmfs (its I/O drained); a refusal makes dmfs undo it.
    fn suspend(&self, device: &Device) -> DmResult<()>;
    /// `device` is about to resume, swapping in its inactive table if any. On a refusal the
    /// mirror runs on its old table again and dmfs drops its inactive table too.
    fn resume(&self, device: &Device) -> DmResult<()>;
    fn rename(&self, device: &Device, new: &str) -> DmResult<()>;
    fn set_uuid(&self, device: &Device, uuid: &str) -> DmResult<()>;
    /// `device` about to become read-only (`chmod a-w dev/NAME`) or writable again.
    fn set_read_only(&self, device: &Device, read_only: bool) -> DmResult<()>;
    /// `dmsetup message`: the mirror's targets answer for a mirrored device (Some); None lets
    /// dmfs's own targets answer.
    fn message(&self, device: &Device, sector: &str, words: &[&str]) -> Option<DmResult<String>>;
    /// `device` about to be removed; answers whether it was mirrored.
    fn remove(&self, device: &Device) -> DmResult<bool>;
    /// The mirror's `dmsetup status` text for a mirrored device.
    fn status_text(&self, device: &Device) -> Option<DmResult<String>>;
    /// The mount ends: every mirrored device goes.
    fn remove_all(&self, devices: &[Arc<Device>]);
}

/// The plain mount's hook: nothing is mirrored, every change is accepted.
pub struct NoMirror;

impl MirrorIo for NoMirror {
    fn io(&self, _: u64) -> Option<Arc<File>> {
        None
    }
}

impl Mirror for NoMirror {
    fn create(&self, _: &Device, _: bool) -> DmResult<()> {
        Ok(())
    }
    fn load(&self, _: &Device, _: &Table) -> DmResult<()> {
        Ok(())
    }
    fn replace_live(&self, _: &Device, _: &Table) -> DmResult<()> {
        Ok(())
    }
    fn suspend(&self, _: &Device) -> DmResult<()> {
        Ok(())
    }
    fn resume(&self, _: &Device) -> DmResult<()> {
        Ok(())
    }
    fn rename(&self, _: &Device, _: &str) -> DmResult<()> {
        Ok(())
    }
    fn set_uuid(&self, _: &Device, _: &str) -> DmResult<()> {
        Ok(())
    }
    fn set_read_only(&self, _: &Device, _: bool) -> DmResult<()> {
        Ok(())
    }
    fn message(&self, _: &Device, _: &str, _: &[&str]) -> Option<DmResult<String>> {
        None
    }
    fn remove(&self, _: &Device) -> DmResult<bool> {
        Ok(false)
    }
    fn status_text(&self, _: &Device) -> Option<DmResult<String>> {
        None
    }
    fn remove_all(&self, _: &[Arc<Device>]) {}
}
