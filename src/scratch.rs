//! Reusable byte buffers for the I/O paths: each thread keeps a few, grown to the largest size
//! it has needed, so the read-modify-write of a partial sector, a snapshot copy-out or a
//! corrupted flakey write does not allocate per request.
//!
//! A thread takes a buffer out of its pool for the length of one call and puts it back after:
//! I/O to a device stacked on another one can nest (a device's edge read reaching a snapshot
//! copy-out below it), and each level then gets a buffer of its own. Memory stays bounded: a
//! thread keeps at most `KEEP_BUFFERS` buffers of at most `KEEP_BYTES` each; a larger or an
//! extra one is freed when the call ends.

use std::cell::RefCell;

/// What O_DIRECT writes (`Backing::write_at_uncached`) need aligned: a page, which covers every
/// logical block size.
pub const DIRECT_ALIGN: usize = 4096;

/// Largest buffer a thread keeps: a FUSE request (1 MiB) plus its two edge sectors, or one
/// snapshot copy (1 MiB) plus the room to align it (`with_aligned_buffer`).
const KEEP_BYTES: usize = (1 << 20) + DIRECT_ALIGN;
/// Buffers a thread keeps: enough for a few levels of stacked devices.
const KEEP_BUFFERS: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with a buffer of `len` bytes from this thread's pool. Its contents are whatever
/// an earlier call left there: callers overwrite what they use.
pub fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buf = POOL.with_borrow_mut(Vec::pop).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = f(&mut buf[..len]);
    if buf.capacity() <= KEEP_BYTES {
        POOL.with_borrow_mut(|pool| {
            if pool.len() < KEEP_BUFFERS {
                // Once per thread: the pool's own room, so later pushes never allocate.
                pool.reserve_exact(KEEP_BUFFERS - pool.len());
                pool.push(buf);
            }
        });
    }
    r
}

/// `with_buffer`, with the buffer's start aligned to `DIRECT_ALIGN` (for O_DIRECT writes).
pub fn with_aligned_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let align = DIRECT_ALIGN;
    with_buffer(len + align, |buf| {
        let skip = buf.as_ptr().align_offset(align);
        f(&mut buf[skip..skip + len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_calls_get_distinct_buffers() {
        with_buffer(16, |a| {
            a.fill(1);
            with_buffer(16, |b| {
                b.fill(2);
            });
            assert!(a.iter().all(|&x| x == 1));
        });
    }

    #[test]
    fn buffers_are_reused() {
        with_buffer(4096, |_| ());
        let (n, ()) = crate::test_support::alloc_count::count(|| {
            for len in [512, 4096, 1000] {
                with_buffer(len, |b| assert_eq!(b.len(), len));
            }
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn aligned_buffers_are_aligned_and_reused() {
        let align = DIRECT_ALIGN;
        with_aligned_buffer(1 << 20, |_| ());
        let (n, ()) = crate::test_support::alloc_count::count(|| {
            for len in [512, 1 << 20, 4096] {
                with_aligned_buffer(len, |b| {
                    assert_eq!(b.len(), len);
                    assert_eq!(b.as_ptr() as usize % align, 0);
                });
            }
        });
        assert_eq!(n, 0);
    }
}
