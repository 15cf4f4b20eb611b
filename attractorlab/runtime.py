"""Process-wide settings that make long CPU runs fast: keep freed tensor memory, back big tensors by huge pages.

An outer step allocates and frees the same megabyte-sized activations over and over. glibc's malloc, by default,
hands such blocks back to the operating system once the free space at the top of its heap passes a threshold it
keeps adjusting, and it maps blocks above 32 MiB on their own and unmaps them when freed; either way the next step
faults every page in again (4 KiB at a time, each zeroed by the kernel). Two remedies, both without a new dependency
(PyTorch's CPU tuning guide suggests another allocator, jemalloc or tcmalloc, via ``LD_PRELOAD``):

- :func:`retain_freed_memory`: glibc's own thresholds set with ``mallopt``, so blocks up to 32 MiB are served from
  the heap and the heap is never trimmed;
- :func:`prefer_huge_pages`: torch's own switch ``THP_MEM_ALLOC_ENABLE=1``, which backs every block of 2 MiB and
  more with transparent huge pages (512x fewer faults for the blocks that are still mapped afresh).

The README's throughput rows measure both (``benchmarks/bench_throughput.py --malloc system`` is the baseline).
The price: the process keeps its high-water memory until it exits. The CLI calls :func:`tune_cpu_memory` at
start-up; a notebook may call it before it imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks above it are always mapped (and unmapped) on their own
TRIM_THRESHOLD = 2**31 - 1  # mallopt's largest (an int): the top of the heap is in practice never given back
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"  # read by torch once, at its first CPU allocation


@functools.cache
def retain_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB from its heap and never trim the heap, so that freed
    activations are reused instead of returned to the OS and faulted in again. Returns whether the settings took
    effect (``False`` off Linux or without glibc, e.g. musl or macOS, where nothing is changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def prefer_huge_pages() -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` (unless the environment already says otherwise) while torch is not yet
    imported; torch's CPU allocator then asks for transparent huge pages for blocks of 2 MiB and more. Returns
    whether the setting is in the environment (once torch is imported, only a value given before that counts)."""
    if "torch" not in sys.modules:
        os.environ.setdefault(HUGE_PAGES, "1")
    return os.environ.get(HUGE_PAGES) == "1"


def tune_cpu_memory(rerun: bool = False) -> bool:
    """Both settings; call it first thing, before torch is imported. With ``rerun`` (a script whose imports
    already loaded torch) the process starts again (``os.execv``, same arguments) with huge pages in the
    environment, unless that is where it came from. Returns whether freed memory is retained."""
    if rerun and "torch" in sys.modules and HUGE_PAGES not in os.environ:
        os.environ[HUGE_PAGES] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    prefer_huge_pages()
    return retain_freed_memory()
