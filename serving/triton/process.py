"""Supervising a server process: tied to its parent, stopped in order, restarted within a
budget, its exit and log summarised."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import ConfigError

PR_SET_PDEATHSIG = 1
# What a signal that ended a server usually means, for the one line that reports it.
SIGNAL_CAUSES = {
    signal.SIGKILL: "killed, e.g. out of memory",
    signal.SIGTERM: "terminated",
    signal.SIGINT: "interrupted",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
}


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


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: ``status 1``, ``signal 9 (killed, e.g. out of memory)``."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {sig.value} ({SIGNAL_CAUSES.get(sig, sig.name)})"


@dataclass(frozen=True)
class RestartPolicy:
    """How often a supervised process is started again after it exits.

    Args:
        max_restarts: restarts allowed within ``window_s``; one more exit stops for good.
        window_s: seconds a restart counts against the budget.
        first_delay_s: the wait before the first restart in the window; each next one doubles.
        max_delay_s: the longest wait.
    """

    max_restarts: int = 5
    window_s: float = 600.0
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be 0 or more, not {self.max_restarts}")
        if not (self.window_s > 0 and self.first_delay_s >= 0 and self.max_delay_s >= 0):
            raise ConfigError(
                "the restart window must be over 0 s and the backoff delays 0 s or more, not "
                f"window {self.window_s}, delays {self.first_delay_s} to {self.max_delay_s}"
            )


class RestartBudget:
    """The restarts a :class:`RestartPolicy` still allows, with their exponential backoff."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.times: deque[float] = deque()

    @property
    def used(self) -> int:
        """Restarts within the window, as of the last :meth:`next_delay`."""
        return len(self.times)

    def next_delay(self, now: float) -> float | None:
        """Count a restart at ``now`` (monotonic seconds); the wait before it, or None when
        the budget is spent (nothing is counted then)."""
        p = self.policy
        while self.times and now - self.times[0] >= p.window_s:
            self.times.popleft()
        if len(self.times) >= p.max_restarts:
            return None
        delay = min(p.first_delay_s * 2.0 ** min(len(self.times), 60), p.max_delay_s)
        self.times.append(now)
        return delay


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a ``tritonserver`` log, without its option tables."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    # Triton's option tables are long and say nothing about the failure.
    kept = [ln for ln in text.splitlines() if not ln.startswith(("|", "+"))]
    return "\n".join(kept[-lines:])
