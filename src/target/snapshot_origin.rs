//! `snapshot-origin <origin>`: the origin's own sectors, with a hook on writes: each snapshot
//! of the origin saves the chunks a write touches before the write lands (the kernel's
//! `origin_map` / `do_origin`).

use std::io;
use std::sync::Arc;

use super::View;
use super::{Area, Ctor, Target, TargetType, check_area};
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::snapshot::Origins;
use crate::units::{Bytes, Sectors};

pub const TYPE: TargetType = TargetType {
    name: "snapshot-origin",
    version: [1, 9, 0],
    construct,
};

/// One `snapshot-origin` table line (not the kernel's `struct origin`, which is the list of
/// an origin's snapshots: that is `snapshot::origins`).
struct OriginTarget {
    dev: Arc<Backing>,
    /// The kernel maps the device's own sector numbers onto the origin, not offsets into the
    /// target: a line starting at sector S reads the origin from S.
    begin: Sectors,
    /// The mount's snapshots: those of `dev` save what a write overwrites.
    origins: Arc<Origins>,
}

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if args.len() != 1 {
        return Err(DmError::invalid("origin: incorrect number of arguments"));
    }
    let dev = ctor
        .resolver
        .open(&args[0])
        .map_err(|e| e.context("Cannot get target device"))?;
    check_area(&dev, Sectors(0), ctor.len)?;
    Ok(Box::new(OriginTarget {
        dev,
        begin: ctor.start,
        origins: ctor.origins.clone(),
    }))
}

impl Target for OriginTarget {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.dev.read_at(self.begin + offset, buf)
    }

    fn read_in_place(&self, offset: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        self.dev
            .read_in_place(Bytes(self.begin.bytes().0 + offset.0), len, send)
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        self.origins
            .origin_write(&self.dev, (self.begin + offset).0, buf)
    }

    fn table_args(&self) -> String {
        self.dev.name()
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        vec![self.dev.clone()]
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        vec![Area::new(&self.dev, Sectors(0), len)]
    }

    fn views(&self) -> Vec<View> {
        vec![View::Linear {
            key: self.dev.key(),
            from: Sectors(0),
        }]
    }
}
