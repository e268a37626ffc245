"""Host allocator settings for the EM's large, short-lived work arrays.

Every E-step batch allocates and frees work arrays of tens of MB (projections, residuals,
back-projection values and grids). glibc serves requests above its mmap threshold (at most
32 MB by default) from fresh mappings and returns them to the system when freed, so every
batch of every iteration pays the page faults of zeroed fresh memory again (4 close states,
8000 particles: 14 s of system time in a 73 s fit). :func:`reuse_freed_memory` makes the
allocator keep freed memory for reuse instead: the same arrays and the same numbers, ~3x
less system time, and a higher resident peak (1.55 -> 1.84 GB there). Runs under a memory
bound (``--max-memory``) use it too: their plan (:func:`hetclass.workspace.plan_memory`)
reserves a second batch working set for the kept arrays (measured in benchmarks/README.md,
"Subset passes and the allocator under a bound").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1     # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 2 ** 30     # requests below this come from the (reused) heap
TRIM_THRESHOLD_BYTES = 2 ** 32     # free heap kept rather than returned to the system


def reuse_freed_memory() -> bool:
    """Keep freed heap memory for reuse (glibc on Linux); False where not applied.

    Process-wide and idempotent; it changes where arrays live, never their values.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, min(TRIM_THRESHOLD_BYTES, 2 ** 31 - 1)) == 1
    return mmap_ok and trim_ok
