//! `error`: every read and write fails with EIO (the kernel's dm-target.c io_err target).
//! The kernel's constructor ignores any arguments it is given, and prints none back.

use std::io;

use super::{Ctor, Target, TargetType, io_error};
use crate::error::DmResult;
use crate::units::Sectors;

pub const TYPE: TargetType = TargetType {
    name: "error",
    version: [1, 5, 0],
    construct,
};

struct ErrorTarget;

fn construct(_ctor: &Ctor<'_>, _args: &[String]) -> DmResult<Box<dyn Target>> {
    Ok(Box::new(ErrorTarget))
}

impl Target for ErrorTarget {
    fn read(&self, _offset: Sectors, _buf: &mut [u8]) -> io::Result<()> {
        Err(io_error())
    }

    fn write(&self, _offset: Sectors, _buf: &[u8]) -> io::Result<()> {
        Err(io_error())
    }

    fn table_args(&self) -> String {
        String::new()
    }
}
