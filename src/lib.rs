//! dmfs: the Linux device mapper, in user space, behind a filesystem. `docs/ARCHITECTURE.md`
//! names the layers and which module sits in which.

pub mod access;
pub mod backing;
pub mod cli;
pub mod coherence;
pub mod control;
pub mod daemon;
pub mod device;
pub mod errlog;
pub mod error;
pub mod fs;
pub mod kernel;
pub mod mirror;
pub mod registry;
pub mod report;
pub mod scratch;
pub mod snapshot;
pub mod table;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod units;
