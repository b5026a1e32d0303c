//! Sector and byte quantities as distinct types, so the two can never be mixed by accident.
//!
//! Tables, targets and backing devices speak in 512-byte sectors; FUSE speaks in bytes. The only
//! bridges between them are the conversions below.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// The device mapper's unit: 512 bytes, whatever the backing device's block size.
pub const SECTOR_SIZE: u64 = 512;

/// A count or position in 512-byte sectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sectors(pub u64);

/// A count or position in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl Sectors {
    pub fn bytes(self) -> Bytes {
        Bytes(self.0 * SECTOR_SIZE)
    }

    pub fn checked_add(self, other: Sectors) -> Option<Sectors> {
        self.0.checked_add(other.0).map(Sectors)
    }
}

impl Bytes {
    /// Whole sectors contained in this many bytes (a trailing partial sector is dropped, as the
    /// kernel's loop driver does for a file whose size is not a multiple of 512).
    pub fn sectors_floor(self) -> Sectors {
        Sectors(self.0 / SECTOR_SIZE)
    }

    /// The byte offset within its sector.
    pub fn sector_offset(self) -> u64 {
        self.0 % SECTOR_SIZE
    }
}

macro_rules! arithmetic {
    ($t:ident) => {
        impl Add for $t {
            type Output = $t;
            fn add(self, o: $t) -> $t {
                $t(self.0 + o.0)
            }
        }
        impl AddAssign for $t {
            fn add_assign(&mut self, o: $t) {
                self.0 += o.0;
            }
        }
        impl Sub for $t {
            type Output = $t;
            fn sub(self, o: $t) -> $t {
                $t(self.0 - o.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
arithmetic!(Sectors);
arithmetic!(Bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Sectors(3).bytes(), Bytes(1536));
        assert_eq!(Bytes(1537).sectors_floor(), Sectors(3));
        assert_eq!(Bytes(1537).sector_offset(), 1);
        assert_eq!(Sectors(u64::MAX).checked_add(Sectors(1)), None);
    }
}
