//! `linear <device> <offset>`: the target's sectors map one to one onto the device from
//! `offset` (the kernel's dm-linear).

use std::io;
use std::sync::Arc;

use super::View;
use super::{Area, Ctor, Target, TargetType, parse_sector_arg};
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::units::{Bytes, Sectors};

pub const TYPE: TargetType = TargetType {
    name: "linear",
    version: [1, 4, 0],
    construct,
};

struct Linear {
    dev: Arc<Backing>,
    start: Sectors,
}

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if args.len() != 2 {
        return Err(DmError::invalid("Invalid argument count"));
    }
    let start =
        parse_sector_arg(&args[1]).ok_or_else(|| DmError::invalid("Invalid device sector"))?;
    let dev = ctor
        .get_device(&args[0], start, ctor.len)
        .map_err(|e| e.context("Device lookup failed"))?;
    Ok(Box::new(Linear { dev, start }))
}

impl Target for Linear {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.dev.read_at(self.start + offset, buf)
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        self.dev.write_at(self.start + offset, buf)
    }

    fn read_in_place(&self, offset: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        self.dev
            .read_in_place(Bytes(self.start.bytes().0 + offset.0), len, send)
    }

    fn table_args(&self) -> String {
        format!("{} {}", self.dev.name(), self.start)
    }

    fn identity_map(&self) -> Option<&Arc<Backing>> {
        (self.start.0 == 0).then_some(&self.dev)
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        vec![self.dev.clone()]
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        vec![Area::new(&self.dev, self.start, len)]
    }

    fn views(&self) -> Vec<View> {
        vec![View::Linear {
            key: self.dev.key(),
            from: self.start,
        }]
    }
}
