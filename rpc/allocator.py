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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above half its per-thread heap size
# (32 MiB on 64-bit): larger allocations are always mapped afresh.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20


def tune_allocator(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Applies the thresholds to this process; True if malloc accepted both."""
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
    if not ok:
        log.warning("mallopt refused the allocator thresholds; message buffers may fault pages")
    return ok
