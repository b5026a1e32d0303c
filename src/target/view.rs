//! What a target tells the page-cache coherence about the bytes it shows: which sectors of
//! which device appear where in the target (`Target::views`).

use crate::device_key::DeviceKey;
use crate::units::Sectors;

/// How a target shows the bytes of a device it maps onto: what `Target::views` returns.
pub enum View {
    /// The device's sectors from `from` appear one to one from the target's sector 0.
    Linear { key: DeviceKey, from: Sectors },
    /// Stripe `stripe` of `stripes`: the device's sectors from `from` are the stripe's, dealt
    /// out in chunks of `chunk` sectors (the target's chunk c of the stripe is its chunk
    /// `c * stripes + stripe`).
    Striped {
        key: DeviceKey,
        from: Sectors,
        stripe: u64,
        stripes: u64,
        chunk: u64,
    },
    /// A change to the device's sectors `from..from + len` may show anywhere in the target.
    Within {
        key: DeviceKey,
        from: Sectors,
        len: Sectors,
    },
}
