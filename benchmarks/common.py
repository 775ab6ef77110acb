"""Shared helpers for benchmarks: repeated timing with median and spread, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated measurements (same unit as the samples)."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 1) -> str:
        d = digits
        return f"{self.median:.{d}f} ({self.low:.{d}f}-{self.high:.{d}f}, n={self.n})"


def stats(samples: list[float]) -> Stats:
    return Stats(statistics.median(samples), min(samples), max(samples), len(samples))


def repeat(fn: Callable[[], float], repeats: int = 5, warmup: int = 1) -> Stats:
    """Call ``fn`` (which returns one figure, e.g. images/s) ``warmup + repeats`` times."""
    for _ in range(warmup):
        fn()
    return stats([fn() for _ in range(repeats)])


def rate(fn: Callable[[], None], items: int) -> float:
    """Items per second for one call of ``fn`` processing ``items`` items."""
    start = time.perf_counter()
    fn()
    return items / (time.perf_counter() - start)


def machine() -> str:
    """One line: CPU model, cores, memory, Python, torch."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
            cpu,
        )
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), no GPU"
        if not torch.cuda.is_available()
        else f"{cpu}, GPU {torch.cuda.get_device_name()}"
    )
