"""Give freed memory back to the operating system after each poll.

The exporter's Python heap stays flat poll after poll (benchmarks/memory.py, tracemalloc), but
a poll allocates and frees a few megabytes (rows of pg_stat_activity, JSON pages, the rendered
exposition). glibc keeps freed chunks in its arenas and returns only the top of the heap, so a
long-running process's RSS creeps up with fragmentation and stays above what it uses.
malloc_trim(0) releases every free page, in the middle of the heap too. It costs microseconds
at this heap size. Elsewhere than glibc (musl, macOS) there is no such call and nothing is done.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked_up = False


def _lookup() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def available() -> bool:
    global _trim, _looked_up
    if not _looked_up:
        _trim, _looked_up = _lookup(), True
    return _trim is not None


def release_free_memory() -> bool:
    """Return free heap pages to the OS; whether the allocator released any."""
    if not available():
        return False
    assert _trim is not None
    return bool(_trim(0))


def freeze_startup_objects() -> None:
    """Move every object alive after startup (modules, classes, the app and its settings: they
    live as long as the process) out of the cyclic garbage collector's reach. Each collection
    of the oldest generation walks every tracked object; with hundreds of thousands of them
    from the imports, that walk was about a tenth of a busy poll's CPU (gc.freeze(), as
    pre-forking servers use it). Garbage made before is collected first."""
    gc.collect()
    gc.freeze()
