//! Memory a read is answered from without dmfs copying it first: a read-only shared mapping of
//! a backing file, so that the reply to the kernel is written straight from the file's page
//! cache and the kernel's one copy (into the reader's pages) is the only one; and zeros for the
//! `zero` target.
//!
//! dmfs never reads the mapped bytes itself. A file can shrink under its mapping, and touching a
//! page past the new end from user space raises SIGBUS; the kernel copying from that page while
//! it takes a reply fails the copy instead (EFAULT to the writer), and FUSE answers the reader's
//! request with EIO, as a read past the end of a backing file answers. So the bytes are only
//! ever handed to a system call (`FileMap::with_range`'s callers pass them to FUSE's reply).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

pub struct FileMap {
    base: NonNull<u8>,
    len: usize,
}

// The mapping is read-only and shared with the file's page cache; a slice of it is handed to
// the kernel only, from any thread.
unsafe impl Send for FileMap {}
unsafe impl Sync for FileMap {}

/// The mappings in use, by the file's device and inode and the mapped length: every reference
/// to one file shares one mapping, so a thousand logical volumes over one image take one range
/// of address space and one set of page tables, not a thousand.
static SHARED: Mutex<Option<HashMap<MapKey, Weak<FileMap>>>> = Mutex::new(None);

/// A mapping's file (device, inode) and length.
type MapKey = (u64, u64, u64);

impl FileMap {
    /// The mapping of the first `len` bytes of the file with device `dev` and inode `ino`,
    /// shared with every other reference to it, made from `file` (an open description of that
    /// file, readable) when there is none yet; None where it cannot be mapped.
    pub fn shared(file: &File, dev: u64, ino: u64, len: u64) -> Option<Arc<FileMap>> {
        let mut shared = SHARED.lock();
        let maps = shared.get_or_insert_with(HashMap::new);
        if let Some(map) = maps.get(&(dev, ino, len)).and_then(Weak::upgrade) {
            return Some(map);
        }
        maps.retain(|_, m| m.strong_count() > 0);
        let map = Arc::new(FileMap::new(file, len)?);
        maps.insert((dev, ino, len), Arc::downgrade(&map));
        Some(map)
    }

    /// Maps the first `len` bytes of `file`, or None where the file cannot be mapped (an empty
    /// file, a filesystem without mmap, an address space too small).
    fn new(file: &File, len: u64) -> Option<FileMap> {
        let len = usize::try_from(len).ok().filter(|&n| n > 0)?;
        // SAFETY: a fresh read-only shared mapping of an open file; the kernel picks the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // Core dumps leave shared file mappings out by default; say it outright, an image can be
        // large.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(base, len, libc::MADV_DONTDUMP) };
        Some(FileMap {
            base: NonNull::new(base.cast())?,
            len,
        })
    }

    /// Calls `send` with the mapped bytes `offset..offset + len` and returns true, or returns
    /// false without calling it when the range is not inside the mapping. `send` must only hand
    /// the bytes to the kernel (see the module's comment), never read them itself.
    pub fn with_range(&self, offset: u64, len: usize, send: &mut dyn FnMut(&[u8])) -> bool {
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: the range lies inside the live mapping, which outlives this call. The bytes
        // can change under the slice (other writers of the file): they are passed on to a
        // system call, which reads whatever they are then, as a pread would.
        let bytes = unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), len) };
        send(bytes);
        true
    }
}

/// The largest read FUSE sends (`fs.fuse.max_pages_limit` pages).
const ZEROS_LEN: usize = 1 << 20;

/// `len` zero bytes in memory of their own, made once (a megabyte for the process's life).
/// None for more than the largest read, or where it cannot be mapped. Not the kernel's shared
/// zero page, which an anonymous mapping only read would show: FUSE pins the pages of a reply,
/// and pinning the zero page takes the kernel's slow path for every page of it.
pub fn zeros(len: usize) -> Option<&'static [u8]> {
    static ZEROS: OnceLock<Option<ZerosBase>> = OnceLock::new();
    let zeros = ZEROS.get_or_init(|| {
        // SAFETY: a fresh private anonymous mapping, populated (its pages written in, zeroed)
        // and then made read-only; the kernel picks the address.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                ZEROS_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return None;
            }
            libc::mprotect(base, ZEROS_LEN, libc::PROT_READ);
            Some(ZerosBase(base.cast()))
        }
    });
    let zeros = zeros.as_ref()?;
    // SAFETY: the mapping is never unmapped, and its bytes are zeros that nothing can change.
    (len <= ZEROS_LEN).then(|| unsafe { std::slice::from_raw_parts(zeros.0, len) })
}

/// The address of the zeros mapping (kept for the process's life).
struct ZerosBase(*const u8);
// SAFETY: the mapping is read-only and never unmapped.
unsafe impl Send for ZerosBase {}
unsafe impl Sync for ZerosBase {}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no slice of it outlives `with_range`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
