//! Text that mirrors what dmsetup prints about a device: `info`, `deps`, `version`.

use crate::device::Device;

/// The device-mapper ioctl interface version this dmfs mirrors (Debian's 6.1 kernel, the
/// oracle's).
pub const DM_INTERFACE_VERSION: &str = "4.47.0";

/// Major number shown for dmfs devices: the kernel's usual dynamic device-mapper major. The
/// minor is the device's id; neither is a real device number on this machine.
pub const DM_MAJOR: u32 = 253;

/// `dmsetup version`.
pub fn version_text() -> String {
    format!(
        "Library version:   dmfs {}\nDriver version:    {DM_INTERFACE_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// `dmsetup info NAME`.
pub fn info_text(device: &Device) -> String {
    let table = device.table();
    let state = match (device.is_suspended(), device.is_read_only()) {
        (false, false) => "ACTIVE",
        (true, false) => "SUSPENDED",
        (false, true) => "ACTIVE (READ-ONLY)",
        (true, true) => "SUSPENDED (READ-ONLY)",
    };
    let tables = if device.inactive_table().is_some() {
        "LIVE & INACTIVE"
    } else {
        "LIVE"
    };
    let mut out = format!(
        "Name:              {}\n\
         State:             {state}\n\
         Read Ahead:        256\n\
         Tables present:    {tables}\n\
         Open count:        {}\n\
         Event number:      {}\n\
         Major, minor:      {DM_MAJOR}, {}\n\
         Number of targets: {}\n",
        device.name(),
        // The kernel counts a device stacked on this one as an opener.
        device.open_count.load(std::sync::atomic::Ordering::SeqCst)
            + device.holders.load(std::sync::atomic::Ordering::SeqCst),
        device.event_nr(),
        device.id,
        table.entries().len()
    );
    if let Some(uuid) = device.uuid() {
        out.push_str(&format!("UUID: {uuid}\n"));
    }
    // dmsetup ends the record with an empty line.
    out.push('\n');
    out
}

/// `dmsetup deps NAME`: the count, then each device, most recently added first as the kernel
/// keeps its list. A block device shows as `(major, minor)` like the kernel's; a file or a
/// device of this mount as `(path)`.
pub fn deps_text(device: &Device) -> String {
    let devices = device.table().devices();
    let mut out = format!("{} dependencies\t:", devices.len());
    for d in devices.iter().rev() {
        let name = d.name();
        match name.split_once(':') {
            Some((maj, min)) if !name.starts_with('/') => out.push_str(&format!(" ({maj}, {min})")),
            _ => out.push_str(&format!(" ({name})")),
        }
    }
    out.push('\n');
    out
}
