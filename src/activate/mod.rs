//! Reading images into tables: what kpartx and `vgchange -ay` would have the device mapper map.
//! This code only produces tables; creating the devices is the registry's.

pub mod crc;
pub mod lvm;
pub mod partitions;
