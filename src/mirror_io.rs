//! Where a mirrored device's I/O goes instead of its own table: the one question a `Device`
//! asks the mount's mirror (`--kernel`: its `/dev/mapper/NAME` node). A leaf, so the device
//! layer does not name the mirror hook above it (`mirror::Mirror`, which takes devices).

use std::fs::File;
use std::sync::Arc;

pub trait MirrorIo: Send + Sync {
    /// Where the I/O of device `id` goes instead of its own table, if anywhere. While it
    /// answers Some, the device's own targets are not made live.
    fn io(&self, id: u64) -> Option<Arc<File>>;
}

/// Nothing is mirrored: every device does its own I/O.
pub struct NoMirrorIo;

impl MirrorIo for NoMirrorIo {
    fn io(&self, _: u64) -> Option<Arc<File>> {
        None
    }
}
