//! What a device shares with its live targets: a leaf, so the targets and the snapshot store
//! below them can raise events and see a suspend without naming the device layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// What a target going live learns of its device: its event counter (what `dmsetup info`
/// shows as the event number) and whether it is suspended.
#[derive(Clone, Default)]
pub struct DeviceLink {
    pub events: Arc<AtomicU32>,
    pub suspended: Arc<AtomicBool>,
}

impl DeviceLink {
    /// Raises an event on the device (the kernel's `dm_table_event`).
    pub fn event(&self) {
        self.events.fetch_add(1, Ordering::SeqCst);
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    /// Whether both link to the same device.
    pub fn same_device(&self, other: &DeviceLink) -> bool {
        Arc::ptr_eq(&self.events, &other.events)
    }
}
