//! `striped <stripes> <chunk_size> (<device> <offset>)+`: chunks of `chunk_size` sectors dealt
//! round-robin across the devices (the kernel's dm-stripe, v1.6.0 rules: any non-zero chunk
//! size, the target length divisible by the stripe count and each stripe by the chunk size).

use std::io;
use std::sync::Arc;

use super::View;
use super::{Area, Ctor, Target, TargetType, for_each_chunk, parse_sector_arg, parse_uint_arg};
use crate::backing::Backing;
use crate::error::{DmError, DmResult};
use crate::units::{Bytes, Sectors};

pub const TYPE: TargetType = TargetType {
    name: "striped",
    version: [1, 6, 0],
    construct,
};

struct Stripe {
    dev: Arc<Backing>,
    start: Sectors,
}

struct Striped {
    stripes: Vec<Stripe>,
    chunk_size: u64,
}

fn construct(ctor: &Ctor<'_>, args: &[String]) -> DmResult<Box<dyn Target>> {
    if args.len() < 2 {
        return Err(DmError::invalid("Not enough arguments"));
    }
    let stripes = parse_uint_arg(&args[0])
        .filter(|&n| n > 0)
        .ok_or_else(|| DmError::invalid("Invalid stripe count"))?;
    let chunk_size = parse_uint_arg(&args[1])
        .filter(|&n| n > 0)
        .ok_or_else(|| DmError::invalid("Invalid chunk_size"))?;
    let len = ctor.len.0;
    if !len.is_multiple_of(stripes as u64) {
        return Err(DmError::invalid(
            "Target length not divisible by number of stripes",
        ));
    }
    let width = Sectors(len / stripes as u64);
    if !width.0.is_multiple_of(chunk_size as u64) {
        return Err(DmError::invalid(
            "Target length not divisible by chunk size",
        ));
    }
    if args.len() as u64 != 2 + 2 * stripes as u64 {
        return Err(DmError::invalid("Not enough destinations specified"));
    }
    let mut out = Vec::with_capacity(stripes as usize);
    for pair in args[2..].chunks(2) {
        let start = parse_sector_arg(&pair[1])
            .ok_or_else(|| DmError::invalid("Couldn't parse stripe destination"))?;
        let dev = ctor
            .get_device(&pair[0], start, width)
            .map_err(|e| e.context("Couldn't parse stripe destination"))?;
        out.push(Stripe { dev, start });
    }
    Ok(Box::new(Striped {
        stripes: out,
        chunk_size: chunk_size as u64,
    }))
}

/// The kernel's stripe_map_sector: which of `stripes` holds `sector` of the target, and where
/// on that stripe (relative to the stripe's own offset).
fn stripe_map(sector: Sectors, chunk_size: u64, stripes: u64) -> (usize, Sectors) {
    let chunk = sector.0 / chunk_size;
    let in_chunk = sector.0 % chunk_size;
    let stripe = (chunk % stripes) as usize;
    let row = chunk / stripes;
    (stripe, Sectors(row * chunk_size + in_chunk))
}

impl Striped {
    /// Splits a sector range at chunk boundaries and hands each piece to `io`.
    fn for_each_chunk(
        &self,
        offset: Sectors,
        len_bytes: usize,
        mut io: impl FnMut(&Stripe, Sectors, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        for_each_chunk(offset, len_bytes, self.chunk_size, |sector, range| {
            let (stripe, at) =
                stripe_map(Sectors(sector), self.chunk_size, self.stripes.len() as u64);
            let s = &self.stripes[stripe];
            io(s, s.start + at, range)
        })
    }
}

impl Target for Striped {
    fn read(&self, offset: Sectors, buf: &mut [u8]) -> io::Result<()> {
        self.for_each_chunk(offset, buf.len(), |s, at, range| {
            s.dev.read_at(at, &mut buf[range])
        })
    }

    fn write(&self, offset: Sectors, buf: &[u8]) -> io::Result<()> {
        self.for_each_chunk(offset, buf.len(), |s, at, range| {
            s.dev.write_at(at, &buf[range])
        })
    }

    /// A range inside one chunk lies on one stripe, in one piece.
    fn read_in_place(&self, offset: Bytes, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        let chunk_bytes = Sectors(self.chunk_size).bytes().0;
        let in_chunk = offset.0 % chunk_bytes;
        if len == 0 || in_chunk + len as u64 > chunk_bytes {
            return false;
        }
        let (stripe, at) = stripe_map(
            offset.sectors_floor(),
            self.chunk_size,
            self.stripes.len() as u64,
        );
        let s = &self.stripes[stripe];
        let at = Bytes((s.start + at).bytes().0 + offset.sector_offset());
        s.dev.read_in_place(at, len, send)
    }

    fn table_args(&self) -> String {
        let mut out = format!("{} {}", self.stripes.len(), self.chunk_size);
        for s in &self.stripes {
            out.push_str(&format!(" {} {}", s.dev.name(), s.start));
        }
        out
    }

    /// As the kernel prints it: the stripe count, the devices, then "1" and one letter per
    /// stripe, 'A' alive ('D' would be a stripe that has failed I/O; dmfs does not count those).
    fn status(&self) -> String {
        let mut out = format!("{} ", self.stripes.len());
        for s in &self.stripes {
            out.push_str(&format!("{} ", s.dev.name()));
        }
        out.push_str("1 ");
        out.extend(self.stripes.iter().map(|_| 'A'));
        out
    }

    fn devices(&self) -> Vec<Arc<Backing>> {
        self.stripes.iter().map(|s| s.dev.clone()).collect()
    }

    fn areas(&self, len: Sectors) -> Vec<Area<'_>> {
        let width = Sectors(len.0 / self.stripes.len() as u64);
        self.stripes
            .iter()
            .map(|s| Area::new(&s.dev, s.start, width))
            .collect()
    }

    fn views(&self) -> Vec<View> {
        let stripes = self.stripes.len() as u64;
        self.stripes
            .iter()
            .enumerate()
            .map(|(i, s)| View::Striped {
                key: s.dev.key(),
                from: s.start,
                stripe: i as u64,
                stripes,
                chunk: self.chunk_size,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper(stripes: usize, chunk: u64) -> Vec<(usize, u64)> {
        // Independent model: chunk c of the target lives on stripe c mod n at row c / n.
        (0..(stripes as u64 * chunk * 3))
            .map(|s| {
                let c = s / chunk;
                (
                    (c % stripes as u64) as usize,
                    (c / stripes as u64) * chunk + s % chunk,
                )
            })
            .collect()
    }

    #[test]
    fn map_matches_round_robin_model() {
        for (n, chunk) in [(1, 8), (2, 1), (3, 7), (4, 16), (3, 5)] {
            for (sector, expect) in mapper(n, chunk).into_iter().enumerate() {
                let (stripe, at) = stripe_map(Sectors(sector as u64), chunk, n as u64);
                assert_eq!(
                    (stripe, at.0),
                    expect,
                    "n={n} chunk={chunk} sector={sector}"
                );
            }
        }
    }
}
