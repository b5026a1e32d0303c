#!/usr/bin/env python3
"""make-cow.py N OUT: a persistent snapshot COW device in the kernel's on-disk format (the
format dm-snap-persistent.c writes: header chunk, then metadata areas of 16-byte little-endian
(old chunk, new chunk) pairs, each followed by its data chunks) with chunk size 1 sector and N
exceptions: origin chunk 2k -> its own data chunk, for k in 0..N. The data chunks are left as
holes (they read as zeros); the file is sparse. Used by benches/run.sh to load a snapshot with a
million exceptions without writing a million chunks through dmfs first."""
import struct
import sys

n, out = int(sys.argv[1]), sys.argv[2]
CHUNK = 512                      # chunk size 1 sector, in bytes
EPA = CHUNK // 16                # exceptions per metadata area
areas = (n + EPA - 1) // EPA
with open(out, "wb") as f:
    f.write(struct.pack("<IIII", 0x70416E53, 1, 1, 1).ljust(CHUNK, b"\0"))
    k = 0
    for a in range(areas):
        area_chunk = 1 + (EPA + 1) * a
        entries = []
        for j in range(EPA):
            if k == n:
                break
            entries.append(struct.pack("<QQ", 2 * k, area_chunk + 1 + j))
            k += 1
        f.seek(area_chunk * CHUNK)
        f.write(b"".join(entries).ljust(CHUNK, b"\0"))
    # A zeroed area after a full last one ends the list, as the kernel expects; the file
    # covers it and every data chunk.
    f.truncate((1 + (EPA + 1) * (areas + 1)) * CHUNK)
