//! Where the layers that change bytes say so: a backing device written (`Backing::write_at`), a
//! device written, replaced or resized (`Device`, the registry). The page-cache coherence,
//! which sits above them and works out which `dev/` pages went stale, listens through
//! `ChangeSink`; until it is attached (and in a mount that never attaches one, as in unit
//! tests), changes go nowhere. One `Changes` belongs to one mount.

use std::sync::{Arc, OnceLock};

use crate::device_key::DeviceKey;
use crate::units::Sectors;

/// What listens to a mount's changes.
pub trait ChangeSink: Send + Sync {
    /// Sectors `start..start + len` of the backing device `key` were written.
    fn backing_written(&self, key: DeviceKey, start: Sectors, len: Sectors);
    /// Sectors `start..start + len` of the device `id` changed (a write to it, a new table).
    fn device_written(&self, id: u64, start: Sectors, len: Sectors);
    /// The device `id` has a new size.
    fn device_resized(&self, id: u64);
    /// A table went live or a device went away: who shows what must be worked out again.
    fn tables_changed(&self);
    /// Runs `work`, a write through `dev/NAME` of device `id` to sectors `start..end`: that
    /// file's own pages of them are left to the kernel.
    fn own_write(&self, id: u64, start: Sectors, end: Sectors, work: &mut dyn FnMut());
}

/// A mount's changes, and the sink they go to once one is attached.
#[derive(Default)]
pub struct Changes {
    sink: OnceLock<Arc<dyn ChangeSink>>,
}

impl Changes {
    /// Changes that go nowhere (devices and files opened outside a mount: tests, fuzzing).
    pub fn none() -> Arc<Changes> {
        Arc::new(Changes::default())
    }

    /// Attaches the sink; once per mount (a second one is refused and returned).
    pub fn attach(&self, sink: Arc<dyn ChangeSink>) -> Result<(), Arc<dyn ChangeSink>> {
        self.sink.set(sink)
    }

    pub fn backing_written(&self, key: DeviceKey, start: Sectors, len: Sectors) {
        if let Some(s) = self.sink.get() {
            s.backing_written(key, start, len);
        }
    }

    pub fn device_written(&self, id: u64, start: Sectors, len: Sectors) {
        if let Some(s) = self.sink.get() {
            s.device_written(id, start, len);
        }
    }

    /// Every byte of device `id` may have changed (a reload went live, a table grew).
    pub fn device_replaced(&self, id: u64) {
        self.device_written(id, Sectors(0), Sectors(u64::MAX / 2));
    }

    pub fn device_resized(&self, id: u64) {
        if let Some(s) = self.sink.get() {
            s.device_resized(id);
        }
    }

    pub fn tables_changed(&self) {
        if let Some(s) = self.sink.get() {
            s.tables_changed();
        }
    }

    pub fn own_write<R>(
        &self,
        id: u64,
        start: Sectors,
        end: Sectors,
        work: impl FnOnce() -> R,
    ) -> R {
        let Some(s) = self.sink.get() else {
            return work();
        };
        let mut work = Some(work);
        let mut result = None;
        s.own_write(id, start, end, &mut || {
            result = work.take().map(|w| w());
        });
        result.expect("own_write runs its work once")
    }
}
