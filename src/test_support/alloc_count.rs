//! Test-only: a global allocator that counts the allocations each thread makes, so a test can
//! prove that the I/O paths allocate nothing once warm. The counter is per thread because unit
//! tests run in parallel threads of one process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: usable from inside the allocator, at any
    // point of a thread's life, without allocating itself.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed straight to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns how many allocations (allocs and reallocs) this thread made meanwhile.
pub fn count<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

/// The I/O paths through `Device::read` and `Device::write`, over small files: once warm,
/// reads and writes of any size and alignment allocate nothing.
mod hot_paths {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::count;
    use crate::backing::{Backing, DeviceResolver};
    use crate::device::Device;
    use crate::error::{DmError, DmResult};
    use crate::snapshot::Origins;
    use crate::table::TableBuilder;
    use crate::units::Bytes;

    /// Temporary files of `bytes` bytes each, named A, B, ... in tables, and the snapshots of
    /// the one mount the tables over them belong to; the files are removed on drop.
    struct Files(Vec<(String, PathBuf)>, Arc<Origins>);

    impl Files {
        fn new(tag: &str, sizes: &[u64]) -> Files {
            Files(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &bytes)| {
                        let name = ((b'A' + i as u8) as char).to_string();
                        let path = std::env::temp_dir()
                            .join(format!("dmfs-alloc-{tag}-{name}-{}", std::process::id()));
                        let f = std::fs::File::create(&path).unwrap();
                        f.set_len(bytes).unwrap();
                        (name, path)
                    })
                    .collect(),
                Arc::default(),
            )
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            for (_, p) in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    impl DeviceResolver for Files {
        fn open(&self, reference: &str) -> DmResult<Arc<Backing>> {
            let (_, path) = self
                .0
                .iter()
                .find(|(n, _)| n == reference)
                .ok_or_else(|| DmError::not_found(reference.to_string()))?;
            Backing::open_path(path, true).map(Arc::new)
        }
    }

    fn device(files: &Files, lines: &[String]) -> Device {
        let mut b = TableBuilder::new();
        for l in lines {
            b.add_line(l, files, &files.1).unwrap();
        }
        let d = Device::new(
            0,
            "t".into(),
            b.table().unwrap(),
            crate::changes::Changes::none(),
        );
        d.resume().unwrap();
        d
    }

    /// (offset, length) pairs inside `size` bytes: aligned and not, small and large, one
    /// sector to 256 KiB, crossing line, stripe and chunk boundaries.
    fn requests(size: u64) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let mut rng = crate::test_support::rng::Rng(0x2545_f491_4f6c_dd1d);
        for len in [512usize, 4096, 1000, 1, 65536, 4097, 262144, 513] {
            for _ in 0..8 {
                let room = size - len as u64;
                let at = rng.next() % room;
                out.push((at, len));
                out.push((at & !4095, len)); // the same length from an aligned offset
            }
        }
        out
    }

    /// Warms the device up with every request once, then runs them all again, reads and
    /// writes, and returns the allocations of the second pass.
    fn allocations_when_warm(d: &Device, size: u64) -> u64 {
        let reqs = requests(size);
        let mut buf = vec![0u8; 1 << 20];
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut pass = || {
            for &(at, len) in &reqs {
                assert_eq!(d.write(Bytes(at), &data[..len]).unwrap(), len);
                assert_eq!(d.read(Bytes(at), &mut buf[..len]).unwrap(), len);
                assert_eq!(buf[..len], data[..len], "at {at} len {len}");
            }
        };
        pass();
        count(pass).0
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn linear() {
        let f = Files::new("linear", &[4 * MIB]);
        let d = device(&f, &["0 6144 linear A 1024".into()]);
        assert_eq!(allocations_when_warm(&d, 6144 * 512), 0);
    }

    #[test]
    fn many_lines() {
        let f = Files::new("lines", &[4 * MIB, 4 * MIB]);
        // 64 lines of 7 sectors each way, alternating files, and a zero line at the end.
        let lines: Vec<String> = (0..128u64)
            .map(|i| {
                let file = if i % 2 == 0 { "A" } else { "B" };
                format!("{} 57 linear {file} {}", i * 57, i * 61)
            })
            .chain(std::iter::once("7296 64 zero".to_string()))
            .collect();
        let d = device(&f, &lines);
        // The zero line reads back zeros, so keep requests off it.
        assert_eq!(allocations_when_warm(&d, 7296 * 512), 0);
    }

    #[test]
    fn striped() {
        let f = Files::new("striped", &[2 * MIB, 2 * MIB, 2 * MIB]);
        let d = device(&f, &["0 12288 striped 3 8 A 0 B 0 C 0".into()]);
        assert_eq!(allocations_when_warm(&d, 12288 * 512), 0);
    }

    #[test]
    fn snapshot_origin_and_snapshot() {
        // A: origin, B: COW. Chunks of 8 sectors.
        let f = Files::new("snap", &[2 * MIB, 4 * MIB]);
        let origin = device(&f, &["0 4096 snapshot-origin A".into()]);
        let snap = device(&f, &["0 4096 snapshot A B P 8".into()]);
        // Every chunk gets its exception first: origin writes copy chunks out, so the warm-up
        // (and the first pass) make exceptions; the counted pass finds them all made.
        let whole = vec![7u8; 4096 * 512];
        origin.write(Bytes(0), &whole).unwrap();
        assert_eq!(allocations_when_warm(&origin, 4096 * 512), 0);
        assert_eq!(allocations_when_warm(&snap, 4096 * 512), 0);
    }

    /// A snapshot read of chunks that have no exception (the origin's data, under the chunk
    /// lock) allocates nothing either.
    #[test]
    fn snapshot_reads_of_unsaved_chunks() {
        let f = Files::new("snapread", &[2 * MIB, 4 * MIB]);
        let snap = device(&f, &["0 4096 snapshot A B P 8".into()]);
        let mut buf = vec![0u8; 1 << 20];
        let reqs = requests(4096 * 512);
        let mut pass = || {
            for &(at, len) in &reqs {
                assert_eq!(snap.read(Bytes(at), &mut buf[..len]).unwrap(), len);
            }
        };
        pass();
        assert_eq!(count(pass).0, 0);
    }

    /// A flakey device that is always down and corrupts every write corrupts a copy in a
    /// reused buffer, not a fresh one.
    #[test]
    fn flakey_corrupting_writes() {
        let f = Files::new("flakey", &[2 * MIB]);
        let d = device(
            &f,
            &["0 4096 flakey A 0 0 1 5 corrupt_bio_byte 1 w 0 0".into()],
        );
        let data = vec![9u8; 1 << 20];
        let reqs = requests(4096 * 512);
        let pass = || {
            for &(at, len) in &reqs {
                assert_eq!(d.write(Bytes(at), &data[..len]).unwrap(), len);
            }
        };
        pass();
        assert_eq!(count(pass).0, 0);
        // The writes were corrupted: the first byte of the last one's bio reads back 0.
        let (at, _) = reqs[reqs.len() - 1];
        let mut b = [1u8; 512];
        d.read(Bytes(at / 512 * 512), &mut b).unwrap();
        assert_eq!(b[0], 0);
    }

    /// The counter itself counts: the test above would see an allocation made in the loop.
    #[test]
    fn counter_counts() {
        let (n, v) = count(|| vec![0u8; 10]);
        assert_eq!((n, v.len()), (1, 10));
    }
}
