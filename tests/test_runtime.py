"""attractorlab.runtime: freed heap blocks stay with the process, big tensors come in huge pages."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
ENV = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}  # each child decides for itself

KEEP = """
import sys
import numpy as np
from attractorlab.runtime import retain_freed_memory

if sys.argv[1] == "tuned":
    assert retain_freed_memory()
for _ in range(3):  # four 20 MiB blocks at once: glibc's default trims the freed top of its heap
    blocks = [np.ones(20 * 2**20 // 8) for _ in range(4)]
    del blocks
with open("/proc/self/statm") as f:
    print(int(f.read().split()[1]) * 4096 // 2**20)
"""

FAULTS = """
import resource
import sys
from attractorlab import runtime

if sys.argv[1] == "tuned":
    runtime.tune_cpu_memory()
import torch

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # 64 MiB blocks are mapped afresh at every allocation, whatever the malloc thresholds
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(program: str, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True, check=True, env=ENV)
    return int(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_are_kept_for_reuse_only_when_asked():
    assert _run(KEEP, "tuned") - _run(KEEP, "default") >= 60  # the 80 MiB of freed blocks stay resident


@pytest.mark.skipif(not (GLIBC and THP.exists() and "[never]" not in THP.read_text()),
                    reason="needs transparent huge pages (always or madvise)")
def test_big_tensors_fault_in_far_fewer_pages_with_huge_pages():
    default, tuned = _run(FAULTS, "default"), _run(FAULTS, "tuned")
    assert default >= 5 * 16_000  # 4 KiB pages: 16,384 faults per 64 MiB block
    assert tuned * 10 < default


def test_huge_pages_are_only_asked_for_before_torch_is_imported():
    code = ("import os, sys; {first}from attractorlab.runtime import prefer_huge_pages; "
            "print(prefer_huge_pages(), os.environ.get('THP_MEM_ALLOC_ENABLE'))")
    def run(first: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True,
                              check=True, env=ENV).stdout.split()

    assert run("") == ["True", "1"]
    assert run("import torch; ") == ["False", "None"]
