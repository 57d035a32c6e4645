"""Precision names, what ``auto`` picks on a device, and the CPU facts that decide it.

``fp32`` is the exact path. ``bf16`` runs the convolutions in bfloat16 and keeps LaMa's FFT
in float32 (torch's CPU FFT takes no bf16). bf16 only pays on CPUs that compute it natively
(AVX-512 BF16 or AMX); elsewhere it is emulated and slower than fp32, so ``auto`` picks it
only there. On CUDA ``auto`` picks bf16 where the GPU supports it, else fp16.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from inpaintd.protocol.errors import BadInputError

from .names import PRECISIONS

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "DTYPES", "cpu_flags", "cpu_has_native_bf16", "physical_cores",
           "resolve_precision", "use_physical_cores"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU flags (``/proc/cpuinfo``) that mean bfloat16 arithmetic in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, empty where ``/proc/cpuinfo`` can't be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores this process may use: hyperthread siblings share one core's units,
    so more threads than cores only adds contention to convolution-bound work."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not line.strip() and core:
                cores.add((phys, core))
                phys = core = ""
        if core:
            cores.add((phys, core))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


def use_physical_cores() -> int:
    """Set torch's intra-op threads to the physical core count; returns it."""
    n = physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``auto`` made concrete for ``device``; an explicit choice checked against it."""
    if requested not in PRECISIONS:
        raise BadInputError(f"unknown precision {requested!r} (use {', '.join(PRECISIONS)})")
    dev = torch.device(device)
    if dev.type == "cuda":
        if requested == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return requested
    if requested == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16":
        raise BadInputError("fp16 is for CUDA devices; on a CPU use bf16 or fp32")
    if requested == "bf16" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 (no %s): bf16 will be slower than fp32",
                    " or ".join(NATIVE_BF16_FLAGS))
    return requested
