"""``server.json``: what a running local Triton says about itself, for other processes.

The version CLI and the batch predictor find the local server's URLs and rendering here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from contracts.triton_config import write_text_atomic

DEFAULT_CACHE = Path(".cache/triton")
STATE_FILE = "server.json"


def write_state(cache_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (which must hold the server's ``pid``) atomically."""
    write_text_atomic(Path(cache_dir) / STATE_FILE, json.dumps(state, indent=2) + "\n")


def read_state(cache_dir: Path = DEFAULT_CACHE, check_alive: bool = True) -> dict[str, Any]:
    """What a running server wrote about itself (URLs, repository, render options), or {}.

    Args:
        cache_dir: the server's cache folder.
        check_alive: return {} unless the recorded process still exists.
    """
    try:
        state = json.loads((Path(cache_dir) / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(state, dict):
        return {}
    if check_alive:
        try:
            os.kill(int(state["pid"]), 0)
        except (OSError, KeyError, ValueError):
            return {}
    return state


def clear_state(cache_dir: Path, pid: int) -> None:
    """Remove the state file if it describes process ``pid`` (not a newer server's)."""
    if read_state(cache_dir, check_alive=False).get("pid") == pid:
        (Path(cache_dir) / STATE_FILE).unlink(missing_ok=True)
