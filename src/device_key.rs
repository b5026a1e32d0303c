//! Which device a reference names, for comparing references: a leaf every layer may use.

/// What makes two references the same device, as the kernel compares block devices: a regular
/// file by its inode, a block device by its number, a device of this mount by its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKey {
    File { dev: u64, ino: u64 },
    Block { rdev: u64 },
    Mapped { id: u64 },
}
