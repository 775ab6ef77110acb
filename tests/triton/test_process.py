"""Supervision's pieces: a real exit described in words, the restart budget and its backoff."""

from __future__ import annotations

import signal
import subprocess

import pytest

from contracts.errors import ConfigError
from serving.triton.process import RestartBudget, RestartPolicy, describe_exit


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        (signal.SIGKILL, "signal 9 (killed, e.g. out of memory)"),
        (signal.SIGTERM, "signal 15 (terminated)"),
        (signal.SIGUSR1, "signal 10 (SIGUSR1)"),
    ],
)
def test_a_signalled_process_is_described(sig, words):
    process = subprocess.Popen(["sleep", "60"])
    process.send_signal(sig)
    assert describe_exit(process.wait(timeout=10)) == words


def test_an_exit_status_is_described():
    assert describe_exit(subprocess.run(["sh", "-c", "exit 3"]).returncode) == "status 3"


def test_backoff_doubles_up_to_its_cap_and_the_budget_runs_out():
    budget = RestartBudget(RestartPolicy(max_restarts=5, window_s=100, max_delay_s=5))
    assert [budget.next_delay(t) for t in range(5)] == [1, 2, 4, 5, 5]
    assert budget.used == 5
    assert budget.next_delay(50) is None  # a sixth within the window: spent
    assert budget.used == 5


def test_restarts_leave_the_budget_when_their_window_has_passed():
    budget = RestartBudget(RestartPolicy(max_restarts=2, window_s=10, first_delay_s=0.5))
    assert [budget.next_delay(0), budget.next_delay(1)] == [0.5, 1.0]
    assert budget.next_delay(9.9) is None
    assert budget.next_delay(10) == 1.0  # the first has left the window; the second has not
    assert budget.used == 2
    assert budget.next_delay(30) == 0.5  # a quiet spell: back to the first delay


@pytest.mark.parametrize(
    "kwargs",
    [{"max_restarts": -1}, {"window_s": 0}, {"first_delay_s": -1}, {"max_delay_s": -0.5}],
)
def test_a_bad_policy_is_a_clear_error(kwargs):
    with pytest.raises(ConfigError, match=r"max_restarts must be|restart window must be"):
        RestartPolicy(**kwargs)
