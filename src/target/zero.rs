//! `zero`: reads return zeros, writes are accepted and dropped (the kernel's dm-zero).

use std::io;

use super::{Ctor, Target, TargetType};
use crate::error::{DmError, DmResult};
use crate::units::{Bytes, Sectors};

pub const TYPE: TargetType = TargetType {
    name: "zero",
    version: [1, 1, 0],
    construct,
};

struct Zero;

fn construct(_ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if !args.is_empty() {
        return Err(DmError::invalid("No arguments required"));
    }
    Ok(Box::new(Zero))
}

impl Target for Zero {
    fn read(&self, _offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write(&self, _offset: Sectors, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }

    /// Zeros the reply is written from, without filling a buffer first.
    fn read_in_place(&self, _offset: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        crate::file_map::zeros(len).map(send).is_some()
    }

    fn table_args(&self) -> String {
        String::new()
    }
}
