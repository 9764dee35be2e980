"""Freed memory stays in the process for the next step (Linux with glibc).

glibc's malloc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it when
it is freed, and hands the top of its heap back to the kernel once more than the trim threshold lies free there. A
training or inference step frees and allocates activations of the same sizes again and again, so each of them is
faulted in anew, 4 KB at a time, every page zeroed by the kernel, a large share of a CPU step on large canvases
(``experiments/bench/allocator.py``; its figures: experiments/bench/README.md). ``keep_freed_memory`` serves every
block from the heap and never trims it (``mallopt``): the process keeps its peak footprint and reuses it. Other C
libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at the heap's top above this many bytes goes back to the kernel
M_MMAP_MAX = -4  # at most this many blocks served by mmap at once


def glibc_version() -> str | None:
    """``glibc 2.36``, or None where the C library is not glibc."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # a name this platform does not know
        return None


def keep_freed_memory() -> bool:
    """Serve every allocation from malloc's heap and never give the heap back (glibc only): True when applied."""
    if glibc_version() is None:
        return False
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success; a trim threshold of -1 switches trimming off (mallopt(3)).
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1


class KeepFreedMemory(Callback):
    """Hydra callback: ``keep_freed_memory()`` in each job's process, before the task runs (data loader workers,
    forked later, inherit it). ``hydra.callbacks.keep_freed_memory.enabled=false`` leaves malloc as it is, for a
    process that must give memory back between peaks."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.enabled and keep_freed_memory():
            log.debug("malloc keeps freed memory for reuse (%s)", glibc_version())
