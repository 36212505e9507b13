"""What the machine can do fast, so that training picks its precision by itself.

bf16 autocast pays only where the hardware computes in bf16: NVIDIA GPUs from Ampere on, and CPUs with AMX-BF16 or
AVX512-BF16 (`lscpu` flags `amx_bf16`, `avx512_bf16`); elsewhere bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux `/proc/cpuinfo`); empty where there is none."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@cache
def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """e.g. 'AMD EPYC, 2 cores, bf16 flags: avx512_bf16' - the line every benchmark prints beside its numbers."""
    flags = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    return f"{cpu_name()}, {os.cpu_count()} cores, bf16 flags: {', '.join(flags) or 'none'}"


def auto_precision(device: str | None = None) -> tuple[str, str]:
    """(Lightning precision, why) for training on `device` ('cpu' or 'cuda'; default: CUDA when available)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", f"{torch.cuda.get_device_name()} computes in bf16"
        return "32-true", f"{torch.cuda.get_device_name()} has no native bf16"
    flags = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    if flags:
        return "bf16-mixed", f"the CPU has {', '.join(flags)}"
    return "32-true", "the CPU has no native bf16 (no amx_bf16 / avx512_bf16)"
