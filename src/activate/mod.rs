//! Reading images into tables: what kpartx and `vgchange -ay` would have the device mapper map.
//! The readers (`partitions`, `lvm`) only produce tables; `activation` creates the devices
//! they plan through the registry, all or nothing.

pub mod activation;
pub mod crc;
pub mod deactivation;
pub mod luks;
pub mod lvm;
pub mod partitions;
