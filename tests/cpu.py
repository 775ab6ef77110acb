"""This CPU's features as the kernel lists them (/proc/cpuinfo), read independently of the
code under test, for tests whose expected outcome depends on the machine they run on."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_units() -> list[str]:
    """``training.export.precision.bf16_units``'s answer, from the kernel's flags."""
    flags = cpu_flags()
    return [n for n, f in (("AMX", "amx_bf16"), ("AVX-512 bf16", "avx512_bf16")) if f in flags]
