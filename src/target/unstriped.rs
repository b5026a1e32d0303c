//! `unstriped <stripes> <chunk size> <stripe #> <device> <offset>`: the inverse of striped,
//! exposing one stripe of a striped layout as a device of its own (the kernel's dm-unstripe
//! v1.1.0): chunk `k` of the target is chunk `k * stripes + stripe #` of the device.
//!
//! Kernel quirks kept on purpose: the stripe number may equal the stripe count (the check is
//! `stripe > stripes`), and is not checked at all with one stripe; the device area checked is
//! `offset` plus the target's length, not the span the mapping reaches, so a read past the
//! device's end fails with EIO when it happens rather than at load.

use std::io;
use std::sync::Arc;

use super::{
    Area, Ctor, Target, TargetType, check_area, for_each_chunk, parse_sector_arg, parse_uint_arg,
};
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::units::{SECTOR_SIZE, Sectors};

pub const TYPE: TargetType = TargetType {
    name: "unstriped",
    version: [1, 1, 0],
    construct,
};

struct Unstriped {
    dev: Arc<Backing>,
    start: Sectors,
    stripes: u32,
    chunk_size: u32,
    stripe: u32,
}

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if args.len() != 5 {
        return Err(DmError::invalid("Invalid number of arguments"));
    }
    let stripes = parse_uint_arg(&args[0])
        .filter(|&n| n > 0)
        .ok_or_else(|| DmError::invalid("Invalid stripe count"))?;
    let chunk_size = parse_uint_arg(&args[1])
        .filter(|&n| n > 0)
        .ok_or_else(|| DmError::invalid("Invalid chunk_size"))?;
    let stripe =
        parse_uint_arg(&args[2]).ok_or_else(|| DmError::invalid("Invalid stripe number"))?;
    if stripe > stripes && stripes > 1 {
        return Err(DmError::invalid(
            "Please provide stripe between [0, # of stripes]",
        ));
    }
    let dev = ctor
        .resolver
        .open(&args[3])
        .map_err(|e| e.context("Couldn't get striped device"))?;
    let start = parse_sector_arg(&args[4])
        .ok_or_else(|| DmError::invalid("Invalid striped device offset"))?;
    if !ctor.len.0.is_multiple_of(u64::from(chunk_size)) {
        return Err(DmError::invalid(
            "Target length not divisible by chunk size",
        ));
    }
    check_area(&dev, start, ctor.len)?;
    Ok(Box::new(Unstriped {
        dev,
        start,
        stripes,
        chunk_size,
        stripe,
    }))
}

/// The kernel's `map_to_core`: where `sector` of the target lives, relative to the device
/// offset. Chunk rows are `stripes` chunks wide; the target's chunk `k` is in row `k`.
fn map_to_core(sector: u64, stripes: u32, chunk_size: u32, stripe: u32) -> u64 {
    let chunk = u64::from(chunk_size);
    let width = u64::from(stripes - 1) * chunk;
    sector
        .wrapping_add(width.wrapping_mul(sector / chunk))
        .wrapping_add(u64::from(stripe) * chunk)
}

impl Unstriped {
    /// Splits a request at chunk boundaries (the kernel's max_io_len of one chunk) and hands
    /// each piece, with its place on the device, to `io`.
    fn for_each_chunk(
        &self,
        offset: Sectors,
        len_bytes: usize,
        mut io: impl FnMut(Sectors, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        for_each_chunk(
            offset,
            len_bytes,
            u64::from(self.chunk_size),
            |sector, range| {
                let at = map_to_core(sector, self.stripes, self.chunk_size, self.stripe);
                // Past any device: the kernel's bio would fail at the end of the device.
                let at = self
                    .start
                    .0
                    .checked_add(at)
                    .filter(|s| s.checked_mul(SECTOR_SIZE).is_some())
                    .ok_or_else(super::io_error)?;
                io(Sectors(at), range)
            },
        )
    }
}

impl Target for Unstriped {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.for_each_chunk(offset, buf.len(), |at, range| {
            self.dev.read_at(at, &mut buf[range])
        })
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        self.for_each_chunk(offset, buf.len(), |at, range| {
            self.dev.write_at(at, &buf[range])
        })
    }

    /// `%d %llu %d %s %llu` in the kernel: the stripe count and number print as signed.
    fn table_args(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.stripes as i32,
            self.chunk_size,
            self.stripe as i32,
            self.dev.name(),
            self.start
        )
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        vec![self.dev.clone()]
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        vec![Area::new(&self.dev, self.start, len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent model: stripe the chunks of a device round-robin over `stripes`, and
    /// collect, in order, the device sectors that land on stripe `which`.
    fn model(stripes: u64, chunk: u64, which: u64, len: u64) -> Vec<u64> {
        (0..)
            .filter(|s: &u64| (s / chunk) % stripes == which)
            .take(len as usize)
            .collect()
    }

    #[test]
    fn map_inverts_striping() {
        for (stripes, chunk, which) in [(2, 8, 0), (2, 8, 1), (3, 5, 2), (4, 1, 3), (1, 16, 0)] {
            let len = u64::from(chunk) * 6;
            let want = model(u64::from(stripes), u64::from(chunk), u64::from(which), len);
            let got: Vec<u64> = (0..len)
                .map(|s| map_to_core(s, stripes, chunk, which))
                .collect();
            assert_eq!(got, want, "stripes={stripes} chunk={chunk} stripe={which}");
        }
    }
}
