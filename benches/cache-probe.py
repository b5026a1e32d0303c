#!/usr/bin/env python3
"""cache-probe.py FILE: does a file's I/O go through the kernel page cache?

Prints "RO RW": the share of 8 MiB that is resident in FILE's page cache (mincore on a shared
mapping) right after reading it through a read-only open, and right after reading and writing
back the same bytes (contents unchanged) through a read-write open, each region first dropped
with POSIX_FADV_DONTNEED. Each is a percentage, or "mmap-refused" when the file cannot be mapped
(FUSE direct I/O without FUSE_DIRECT_IO_ALLOW_MMAP). A FUSE file opened with FOPEN_DIRECT_IO
leaves nothing cached (0%); one in page-cache mode leaves all of it (100%).
Used by benches/run.sh for its results header.
"""
import ctypes
import os
import sys

MIB = 1 << 20
LEN = 8 * MIB
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
PROT_READ, MAP_SHARED = 1, 1
MAP_FAILED = ctypes.c_void_p(-1).value


def resident(fd, off):
    addr = libc.mmap(None, LEN, PROT_READ, MAP_SHARED, fd, off)
    if addr in (None, MAP_FAILED):
        return "mmap-refused"
    pages = LEN // os.sysconf("SC_PAGE_SIZE")
    vec = ctypes.create_string_buffer(pages)
    try:
        if libc.mincore(addr, LEN, vec) != 0:
            return "mincore-failed"
        n = sum(1 for b in vec.raw if b & 1)
    finally:
        libc.munmap(addr, LEN)
    return f"{100 * n // pages}%"


def probe(path, flags, off, write_back):
    fd = os.open(path, flags)
    try:
        os.posix_fadvise(fd, off, LEN, os.POSIX_FADV_DONTNEED)
        data = os.pread(fd, LEN, off)
        if write_back:
            os.pwrite(fd, data, off)
        return resident(fd, off)
    finally:
        os.close(fd)


def main():
    path = sys.argv[1]
    ro = probe(path, os.O_RDONLY, 0, False)
    try:
        rw = probe(path, os.O_RDWR, 64 * MIB, True)
    except OSError as e:
        rw = f"error-{e.errno}"
    print(ro, rw)


main()
