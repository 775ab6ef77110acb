"""Supervising a server process: tied to its parent, stopped in order, its log summarised."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` of a child that must not outlive a test run or a CLI killed hard."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, wait for in-flight work to finish, SIGKILL after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a ``tritonserver`` log, without its option tables."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    # Triton's option tables are long and say nothing about the failure.
    kept = [ln for ln in text.splitlines() if not ln.startswith(("|", "+"))]
    return "\n".join(kept[-lines:])
