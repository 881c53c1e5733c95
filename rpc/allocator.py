"""Keeps freed message buffers mapped, so moving tensors does not fault pages.

gRPC allocates every message it sends or receives (~1 MiB chunks here),
and glibc's malloc serves allocations above its mmap threshold (128 KiB at
start) with fresh mappings and returns free memory at the top of a heap to
the kernel once more than its trim threshold (twice the mmap threshold) is
free. With chunks streaming through, most messages land on fresh pages that
the kernel zero-fills and maps 4 KiB at a time: in `perf` that was ~20% of a
receiver's CPU (`exc_page_fault`, `clear_page_erms`), as much as the data
copies. Raising both thresholds lets freed chunks be reused: in
`bench/transport.py` the Push path moved 1.3–1.6 GB/s instead of
0.9–1.15 (see bench/RESULTS.md).

The cost is memory that stays mapped after a burst: at most the trim
threshold of free space per malloc arena, and only memory that was in use
at the peak, so peak RSS does not grow. Only glibc has `mallopt`; elsewhere
this does nothing.

Arenas: glibc gives threads that meet on a lock arenas of their own, up
to 8 per core, and each keeps up to the trim threshold of free memory. A
peer has dozens of threads (gRPC's, one sender per neighbor, membership),
so that retention multiplied: four digits-wide peers held 1.5-2.7 GB each.
Two arenas (M_ARENA_MAX, unless MALLOC_ARENA_MAX is set) cut that to
1.1-1.4 GB with no loss of Push throughput (bench/RESULTS.md, Memory soak).

Tensors above the largest threshold glibc allows (32 MiB) are still mapped
afresh each time: a layer's gradient is a new tensor every backward pass,
so a 36 MiB weight cost 9,200 page faults per step — 150,000 a second, a
third of the training thread's time on a 10 M-parameter model. Torch backs
such tensors with transparent huge pages when THP_MEM_ALLOC_ENABLE is set
(2 MiB per fault instead of 4 KiB), which this sets too, unless the
environment says otherwise: digits-wide trains 1.4-1.7x faster (numpy
already asks for huge pages for its large arrays). Torch reads the variable
at its first allocation, so call this before creating tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
# glibc refuses an mmap threshold above half its per-thread heap size
# (32 MiB on 64-bit): larger allocations are always mapped afresh.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
TORCH_HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
ARENA_MAX_ENV = "MALLOC_ARENA_MAX"  # glibc's own setting, which wins


def tune_allocator(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Applies the thresholds and the arena limit to this process, and asks
    torch for huge pages; True if malloc accepted them all. Call it before
    threads start: arenas made earlier stay."""
    os.environ.setdefault(TORCH_HUGE_PAGES_ENV, "1")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: allocator left as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) & bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )
    if ARENA_MAX_ENV not in os.environ:
        ok &= bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    if not ok:
        log.warning("mallopt refused the allocator settings; buffers may fault pages")
    return ok
