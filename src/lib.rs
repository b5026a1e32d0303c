//! dmfs: the Linux device mapper, in user space, behind a filesystem. `docs/ARCHITECTURE.md`
//! names the layers and which module sits in which.

pub mod access;
pub mod activate;
pub mod backing;
pub mod block;
pub mod changes;
pub mod cli;
pub mod coherence;
pub mod control;
pub mod crypt;
pub mod daemon;
pub mod device;
pub mod device_key;
pub mod device_link;
pub mod errlog;
pub mod error;
pub mod file_map;
pub mod fs;
pub mod kernel;
pub mod mirror;
pub mod mirror_io;
pub mod passphrase;
pub mod registry;
pub mod report;
pub mod resolver;
pub mod scratch;
pub mod secret;
pub mod snapshot;
pub mod table;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod units;
