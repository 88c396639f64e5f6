"""One process-wide allocator tweak shared by the packing pool and the data workers."""

from __future__ import annotations

__all__ = ["keep_freed_buffers"]


def keep_freed_buffers() -> None:
    """glibc: stop returning every large buffer to the OS right away.

    Workers allocate and free song- and batch-sized buffers constantly; with glibc's
    defaults each one is an mmap/munmap plus page faults (workers ran ~1.6x slower).
    No-op where libc.so.6 or mallopt is unavailable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
